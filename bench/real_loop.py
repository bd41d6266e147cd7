"""The whole loop on a real pretrained pair: SmolLM2-135M-Instruct and a student cut from it.

    python -m bench --only real_loop        # ~45 min on 2 cores the first time (builds the pair)
    python -m bench.real_loop --skip-methods

Measured, in this order, on the real preset (``--preset smollm2``) with the support
workload (chat with a system prompt, sometimes an earlier turn):

1. the pair: import / derive / label / bootstrap / calibrate seconds (``build_report.json``);
2. the teacher's consistency per task family: answers that end on their own, answers
   that repeat the request's key entity, and the same answer with and without an earlier
   turn (context stability); and the in-process teacher against vLLM's own server;
3. confidence on real answers: AUROC of each scorer for "the student agrees with the
   teacher", greedy (temperature 0) and sampled (temperature 1, scored on the drawn
   tokens and on the top tokens);
4. the three distillation methods (SFT, SFT + logit KD blend, on-policy logit KD) from
   the same derived student on the same teacher-labelled seeds, at the same step
   budget, with held-out agreement at checkpoints (the curve);
5. the loop through the ``distillery run`` stack (Tansu, the consumer, the Serve app with
   the student on vLLM) with the teacher served by vLLM's own OpenAI server
   (``python -m vllm.entrypoints.openai.api_server``) reached as an external teacher:
   before drift, drift (half the traffic on the family the student never saw), one
   automatic refresh (drift check -> dataset -> TRL -> gate -> canary -> promote),
   after. Escalation rates, served agreement (token F1 >= 0.9), cost vs teacher-only,
   stage seconds.

Raw numbers: ``bench/results/real_loop.json`` (top-level ``summary``); report section in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from bench._common import RESULTS, VLLMServer, free_port, machine_info, write_result

REPO = Path(__file__).resolve().parents[1]
NAME = "real_loop"
MODELS = REPO / "var" / "models" / "smollm2"
TARGETS = {
    "drifted_escalation_drop_min": 0.5,
    "served_agreement_min": 0.95,
    "old_agreement_drop_max": 0.03,
    "refresh_cycle_s_max": 900.0,
}


def _settings(var: Path, **overrides: Any) -> Any:
    from distillery.settings import load_settings

    return load_settings(preset="smollm2", var_dir=str(var), models_dir=str(MODELS), **overrides)


# ---- 2. teacher consistency ----------------------------------------------------------
def teacher_consistency(settings: Any, per_family: int, teacher_url: str | None) -> dict[str, Any]:
    from demo import SUPPORT_FAMILIES, sample_support
    from demo._support import HISTORIES, _conversation
    from retrain import Pair
    from router import AgreementMetric, build_backend, generate_requests

    agree = AgreementMetric(settings.agreement)
    rng = random.Random(11)
    out: dict[str, Any] = {}
    base: list[Pair] = []
    other: list[Pair] = []
    keys: list[tuple[str, str]] = []
    for family in SUPPORT_FAMILIES:
        for req in sample_support([family.name], per_family, rng):
            history = HISTORIES[1] if req.messages[1:-1] == () else ()
            base.append(Pair(req.question, "", family.name, "c", req.messages))
            other.append(Pair(req.question, "", family.name, "c", _conversation(req.question, history)))
            keys.append((family.name, req.key))

    async def answers(backend: Any, pairs: list[Pair]) -> list[Any]:
        try:
            return await generate_requests(backend, [p.to_request(24) for p in pairs], batch_size=32)
        finally:
            await backend.close()

    teacher_dir = settings.tier_dir("teacher")
    local = build_backend(settings.teacher, default_dir=teacher_dir, model_id="teacher")
    a = asyncio.run(answers(local, base))
    local = build_backend(settings.teacher, default_dir=teacher_dir, model_id="teacher")
    b = asyncio.run(answers(local, other))
    server: list[Any] = []
    if teacher_url:
        from router import OpenAIHTTPBackend

        server = asyncio.run(answers(OpenAIHTTPBackend(teacher_url, "teacher", timeout_s=120), base))
    for family in SUPPORT_FAMILIES:
        idx = [i for i, (f, _) in enumerate(keys) if f == family.name]
        row = {
            "requests": len(idx),
            "stops_on_its_own": sum(a[i].finish_reason == "stop" for i in idx) / len(idx),
            "repeats_the_key": sum(keys[i][1].lower() in a[i].text.lower() for i in idx) / len(idx),
            "same_answer_with_and_without_an_earlier_turn": sum(agree(a[i].text, b[i].text) for i in idx)
            / len(idx),
        }
        if server:
            row["same_answer_in_process_and_vllm_server"] = sum(
                agree(a[i].text, server[i].text) for i in idx
            ) / len(idx)
        out[family.name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        out[family.name]["example"] = a[idx[0]].text
    return out


# ---- 3. AUROC on real answers ---------------------------------------------------------
def confidence_auroc(settings: Any, n: int) -> dict[str, Any]:
    from distillery._workloads import workload_for
    from router import (
        SCORER_NAMES,
        AgreementMetric,
        GenerationRequest,
        SampledConfidence,
        all_scores,
        auroc,
        build_backend,
        confidence_logprobs,
        generate_requests,
    )

    workload = workload_for("support")
    items = workload.sample(workload.routes, n, random.Random(5))
    agree = AgreementMetric(settings.agreement)
    greedy = [i.pair.to_request(24) for i in items]
    sampled = [
        GenerationRequest(messages=r.messages, max_tokens=24, temperature=1.0, top_p=1.0) for r in greedy
    ]

    async def run(tier: str, requests: Sequence[Any]) -> list[Any]:
        cfg = settings.student if tier == "student" else settings.teacher
        backend = build_backend(cfg, default_dir=settings.tier_dir(tier), model_id=tier)
        try:
            return await generate_requests(backend, requests, batch_size=32)
        finally:
            await backend.close()

    teacher = asyncio.run(run("teacher", greedy))
    s_greedy = asyncio.run(run("student", greedy))
    s_sampled = asyncio.run(run("student", sampled))
    result: dict[str, Any] = {"n": n, "routes": list(workload.routes)}
    modes: tuple[tuple[str, list[Any], SampledConfidence], ...] = (
        ("temperature_0", s_greedy, "sampled_token"),
        ("temperature_1_sampled_token", s_sampled, "sampled_token"),
        ("temperature_1_top_token", s_sampled, "top_token"),
    )
    for label, gens, mode in modes:
        ok = [agree(g.text, t.text) for g, t in zip(gens, teacher, strict=True)]
        scores = [all_scores(confidence_logprobs(g, sampled=True, mode=mode)) for g in gens]
        result[label] = {
            "agreement": round(sum(ok) / len(ok), 4),
            "auroc": {s: _r(auroc([x[s] for x in scores], ok)) for s in SCORER_NAMES},
            "mean_confidence_agreeing": _r(
                _mean([x["mean_logprob"] for x, o in zip(scores, ok, strict=True) if o])
            ),
        }
    # The tier decision itself: the greedy answer's confidence vs the sampled answer's.
    g_conf = [all_scores(confidence_logprobs(g, sampled=False))["mean_logprob"] for g in s_greedy]
    shift_modes: tuple[SampledConfidence, ...] = ("sampled_token", "top_token")
    for mode in shift_modes:
        s_conf = [
            all_scores(confidence_logprobs(g, sampled=True, mode=mode))["mean_logprob"] for g in s_sampled
        ]
        result[f"mean_abs_confidence_shift_t1_{mode}"] = _r(
            _mean([abs(a - b) for a, b in zip(g_conf, s_conf, strict=True)])
        )
    return result


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# ---- 4. the three distillation methods ------------------------------------------------
def methods(settings: Any, steps: int, work: Path, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each method at ``steps``, then SFT again for as long as the best method took (the
    equal wall-clock view). Arms measured before at the same ``steps`` are reused."""
    from transformers import TrainerCallback

    from common.model_dir import REFERENCE_FILE, SUITE_FILE
    from retrain import DistillDataset, derive_student, distill, load_pairs
    from router import AgreementMetric, generate_requests
    from router._transformers_backend import TransformersBackend

    student_dir = settings.tier_dir("student")
    train = load_pairs(student_dir / REFERENCE_FILE, "teacher")
    evalset = load_pairs(student_dir / SUITE_FILE, "suite")[:96]
    agree = AgreementMetric(settings.agreement)
    derived = work / "derived"
    derive_student(settings.tier_dir("teacher"), derived, num_layers=settings.real.student_layers)

    class Curve(TrainerCallback):
        def __init__(self, total: int) -> None:
            self.checkpoints = sorted({max(1, total // 3), max(1, 2 * total // 3), total})
            self.points: list[dict[str, Any]] = []
            self.started = time.monotonic()
            self.eval_s = 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if state.global_step not in self.checkpoints:
                return
            t0 = time.monotonic()
            tmp = work / f"ckpt-{state.global_step}"
            model.save_pretrained(str(tmp))
            shutil.copy2(derived / "tokenizer.json", tmp / "tokenizer.json")
            for name in ("tokenizer_config.json", "chat_template.jinja"):
                if (derived / name).is_file():
                    shutil.copy2(derived / name, tmp / name)
            backend = TransformersBackend(tmp, num_threads=2)
            gens = asyncio.run(generate_requests(backend, [p.to_request(24) for p in evalset], batch_size=32))
            ok = [agree(g.text, p.completion) for g, p in zip(gens, evalset, strict=True)]
            shutil.rmtree(tmp, ignore_errors=True)
            self.eval_s += time.monotonic() - t0
            self.points.append(
                {
                    "step": int(state.global_step),
                    "agreement": round(sum(ok) / len(ok), 4),
                    "train_seconds": round(time.monotonic() - self.started - self.eval_s, 1),
                }
            )
            model.train()

    out: dict[str, Any] = {"steps": steps, "train_examples": len(train), "eval_examples": len(evalset)}
    prev = previous if previous and previous.get("steps") == steps else {}

    def arm(method: str, n_steps: int) -> dict[str, Any]:
        curve = Curve(n_steps)
        cfg = settings.real.bootstrap.model_copy(update={"steps": n_steps, "method": method})
        t0 = time.monotonic()
        result = distill(
            derived,
            DistillDataset(train, [], len(train), 0, 0),
            work / f"m-{method}",
            cfg,
            teacher_dir=settings.tier_dir("teacher"),
            callbacks=[curve],
        )
        shutil.rmtree(work / f"m-{method}", ignore_errors=True)
        row = {
            "steps": n_steps,
            "curve": curve.points,
            "final_agreement": curve.points[-1]["agreement"] if curve.points else None,
            "seconds_per_step": round((result.seconds - curve.eval_s) / max(1, result.steps), 2),
            "wall_s": round(time.monotonic() - t0, 1),
        }
        print(f"[methods] {method} x {n_steps}: {row}", flush=True)
        return row

    for method in ("sft", "sft_kd", "logit_kd"):
        out[method] = prev.get(method) or arm(method, steps)
    ranked = sorted(("sft", "sft_kd", "logit_kd"), key=lambda m: -(out[m]["final_agreement"] or 0.0))
    out["best"] = ranked[0]
    best_s = out[out["best"]]["seconds_per_step"] * steps
    if out["best"] != "sft":
        equal = max(steps, round(best_s / out["sft"]["seconds_per_step"]))
        out["sft_equal_time"] = prev.get("sft_equal_time") or arm("sft", equal)
        winner = out["sft_equal_time"]["final_agreement"] or 0.0
        out["best_at_equal_time"] = (
            "sft" if winner >= (out[out["best"]]["final_agreement"] or 0.0) else out["best"]
        )
    else:
        out["best_at_equal_time"] = "sft"
    return out


# ---- 5. the loop -------------------------------------------------------------------------
def _teacher_server(settings: Any, var: Path) -> VLLMServer:
    log = var / "vllm-teacher.log"
    return VLLMServer(
        settings.tier_dir("teacher"), log, served_name="teacher", max_logprobs=5, max_model_len=2048
    )


class _TimedLoop:
    """The refresh loop's tick, timed, plus the swap (until /healthz names the new version)."""

    def __init__(self, loop: Any, url: str, registry: Any) -> None:
        self._loop = loop
        self._url = url
        self._registry = registry
        self.ticks: list[dict[str, Any]] = []

    def tick(self) -> Any:
        started = time.time()
        event = self._loop.tick()
        ended = time.time()
        swap_s = None
        if event.result == "promoted":
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{self._url}/healthz", timeout=5).json().get("student") == event.version:
                        swap_s = round(time.time() - ended, 2)
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        gate = self._registry.get(event.version).manifest.get("gate") if event.version else None
        record = {"started": started, "ended": ended, "swap_s": swap_s, **asdict(event), "gate": gate}
        self.ticks.append(record)
        return event


def loop_run(settings: Any, var: Path, args: argparse.Namespace) -> dict[str, Any]:
    from deploy import ModelRegistry
    from distillery._scenario import run_scenario
    from distillery._stack import LocalStack, build_loop
    from distillery._workloads import workload_for
    from router import AgreementMetric

    server = _teacher_server(settings, var)
    try:
        server.wait()
        settings = _settings(
            var,
            server={"port": free_port()},
            student={"kind": "vllm", "num_threads": 1},
            teacher={"kind": "openai", "base_url": server.url, "model": "teacher", "timeout_s": 120},
            feedback={"sample_rate": 0.2, "route_labeler": "demo:support_route_label"},
            loop={"nightly_at": None},
        )
        # The ``distillery run`` stack without its loop thread: this benchmark ticks it.
        with LocalStack(settings) as stack:
            registry = ModelRegistry(stack.settings.resolved_registry_dir)
            timed = _TimedLoop(build_loop(stack.settings), stack.url, registry)
            started = time.monotonic()
            report = run_scenario(
                stack.url,
                timed,  # type: ignore[arg-type]  # duck-typed: only tick() is called
                workload=workload_for("support"),
                agreement=AgreementMetric(settings.agreement),
                drift_requests=args.drift_requests,
                window=args.window,
                pricing=settings.pricing,
                plot_path=REPO / "docs" / "img" / "real_loop_timeline.png",
                max_attempts=args.attempts,
            )
            return {
                "scenario": report.to_dict(),
                "ticks": timed.ticks,
                "scenario_s": round(time.monotonic() - started, 1),
            }
    finally:
        server.stop()


def run(argv: list[str] | None = None) -> dict[str, Any]:
    from distillery._real_pair import BUILD_REPORT, ensure_real_pair

    quick = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(prog="python -m bench.real_loop")
    parser.add_argument("--window", type=int, default=80 if quick else 160)
    parser.add_argument("--drift-requests", type=int, default=400 if quick else 800)
    parser.add_argument("--attempts", type=int, default=2)
    parser.add_argument("--consistency-per-family", type=int, default=20 if quick else 40)
    parser.add_argument("--auroc-n", type=int, default=120 if quick else 240)
    parser.add_argument("--method-steps", type=int, default=60 if quick else 120)
    parser.add_argument(
        "--reuse",
        default="",
        help="comma-separated parts to take from the last results instead of measuring again"
        " (consistency, confidence, methods, loop)",
    )
    args = parser.parse_args([] if argv is None else argv)
    var = Path(tempfile.mkdtemp(prefix="drl-"))
    settings = _settings(var)
    t0 = time.monotonic()
    pair = ensure_real_pair(settings)
    build_file = settings.tier_dir("student") / BUILD_REPORT
    build = json.loads(build_file.read_text()) if build_file.is_file() else pair.to_dict()
    print(f"[pair] {build.get('timings_s')} ({time.monotonic() - t0:.0f}s now)", flush=True)
    result: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "targets": TARGETS}
    result["pair"] = build
    reuse = {x for x in args.reuse.split(",") if x}
    last_file = RESULTS / f"{NAME}.json"
    last: dict[str, Any] = json.loads(last_file.read_text()) if reuse and last_file.is_file() else {}
    if "consistency" in reuse and "teacher_consistency" in last:
        result["teacher_consistency"] = last["teacher_consistency"]
    else:
        server = _teacher_server(settings, var)
        try:
            server.wait()
            per_family = args.consistency_per_family
            result["teacher_consistency"] = teacher_consistency(settings, per_family, server.url)
        finally:
            server.stop()
    print(f"[consistency] {json.dumps(result['teacher_consistency'])}", flush=True)
    if "confidence" in reuse and "confidence" in last:
        result["confidence"] = last["confidence"]
    else:
        result["confidence"] = confidence_auroc(settings, args.auroc_n)
    print(f"[confidence] {json.dumps(result['confidence'])}", flush=True)
    if "methods" in reuse:
        result["methods"] = last.get("methods")
    else:
        previous = json.loads(last_file.read_text()).get("methods") if last_file.is_file() else None
        result["methods"] = methods(settings, args.method_steps, var / "methods", previous)
    if "loop" in reuse and "loop" in last:
        result["loop"] = last["loop"]
    else:
        result["loop"] = loop_run(settings, var, args)
    result["summary"] = summarize(result)
    write_result(NAME, result)
    print(f"[summary] {json.dumps(result['summary'])}", flush=True)
    shutil.rmtree(var, ignore_errors=True)
    return result


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    windows = result["loop"]["scenario"]["windows"]
    before, drift, after = windows[0], windows[1], windows[-1]
    promoted = [t for t in result["loop"]["ticks"] if t["result"] == "promoted"]
    cycle = None
    if promoted:
        t = promoted[-1]
        cycle = round(sum(t["timings_s"].values()) + (t["swap_s"] or 0.0), 1)
    return {
        "drifted_escalation_before": drift["escalation_rate_new_skills"],
        "drifted_escalation_after": after["escalation_rate_new_skills"],
        "served_agreement_after": round(after["agreement"], 4),
        "old_agreement_before": before["accuracy_old_skills"],
        "old_agreement_after": after["accuracy_old_skills"],
        "refresh_cycle_s": cycle,
        "cost_vs_teacher_only_after": round(after["cost_vs_teacher_only"], 4),
        "old_escalation_before": before["escalation_rate_old_skills"],
        "old_escalation_after": after["escalation_rate_old_skills"],
        "refresh_results": [t["result"] for t in result["loop"]["ticks"]],
    }


if __name__ == "__main__":
    run(sys.argv[1:])
