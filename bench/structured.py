"""Structured outputs and tool calls on the real pair: validity, confidence, one refresh.

    python -m bench --only structured      # ~40 min on 2 cores (builds the pair if missing)
    python -m bench.structured --engine-only

On the real preset (SmolLM2-135M-Instruct teacher, the bootstrapped 8-layer student), with
the support domain's structured families (``ticket_json``: ``response_format``
``json_schema``; ``tool_call``: ``tools`` + ``tool_choice: required``):

1. engines, in process: the teacher's and the student's answers under constraints, the
   share that keeps the contract (``router._contract.check_answer``; must be 1.0 for every
   answer that ended on its own), structural agreement student vs teacher (parsed JSON;
   tool name + parsed arguments), AUROC of each confidence scorer for "agrees
   structurally" on the constrained answers (raw log-probs, the served scoring), and the
   student's tokens/s with and without the constraint on the same prompts; the same on
   the raw and on the grammar-masked (renormalised) log-probs of the same answers, which
   is the measurement behind the served scoring reading raw ones; run on the bootstrapped
   student and again on the refreshed one;
2. the loop through the ``distillery run`` stack (Tansu, the consumer, Serve, the stack's
   own refresh loop via ``build_loop``): before drift, drift onto the structured families,
   one automatic refresh (drift check -> dataset -> TRL -> gate -> canary -> promote),
   after. Escalation per structured family before/after, structural agreement of served
   answers with the teacher's (asked through ``distillery-teacher``), validity of every
   served JSON answer and tool call (``jsonschema`` on the wire body), the old routes'
   escalation in the same windows.

Raw numbers: ``bench/results/structured.json`` (top-level ``summary``: ``json_validity``,
``tool_call_validity``, ``structured_escalation_before``/``_after``,
``structural_agreement_after``, ``tool_call_agreement_after``, ...); report section in
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
from pathlib import Path
from typing import Any

from bench._common import free_port, machine_info, write_result

REPO = Path(__file__).resolve().parents[1]
NAME = "structured"
MODELS = REPO / "var" / "models" / "smollm2"
MAX_TOKENS = 48
TARGETS = {
    "json_validity": 1.0,
    "tool_call_validity": 1.0,
    "structured_escalation_drop_min": 0.5,
    "structural_agreement_after_min": 0.95,
}


def _settings(var: Path, **overrides: Any) -> Any:
    from distillery.settings import load_settings

    return load_settings(preset="smollm2", var_dir=str(var), models_dir=str(MODELS), **overrides)


def _requests(families: Sequence[str], n: int, seed: int) -> list[tuple[str, Any]]:
    """(family, GenerationRequest) as the gateway builds them from the wire body."""
    from demo import sample_support
    from gateway._structured import chat_fields
    from gateway.protocol import ChatCompletionRequest
    from router import GenerationRequest

    out = []
    for r in sample_support(families, n, random.Random(seed)):
        body = ChatCompletionRequest.model_validate(r.as_body())
        out.append((r.family, GenerationRequest(max_tokens=MAX_TOKENS, **chat_fields(body))))
    return out


def _plain(request: Any) -> Any:
    return request.model_copy(update={"response_format": None, "tools": (), "tool_choice": "none"})


def _share(flags: Sequence[bool]) -> float | None:
    """The share of ``flags`` that hold; None when there is nothing to judge."""
    return sum(flags) / len(flags) if flags else None


# ---- 1. engines -----------------------------------------------------------------------
def raw_and_masked_logprobs(
    model_dir: Path, requests: Sequence[Any]
) -> list[tuple[str, list[float], list[float]]]:
    """Per request, the greedy constrained answer and its tokens' log-probs (EOS included,
    as the served scoring counts it) under the model's raw distribution and under the
    grammar-masked, renormalised one (what vLLM reports as "processed" log-probs).

    The served scorers read the raw ones; this is the measurement that chose them. Decoded
    here with the transformers engine's own grammar processor (``router._logits.Shaping``),
    one request at a time, so each row's mask is exactly the one its answer was decoded
    under."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.model_dir import ModelManifest
    from router._logits import Grammars, Shaping, grammar_key
    from router._render import render_prompt

    torch.set_num_threads(os.cpu_count() or 1)  # the engines above left it at theirs
    tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    manifest = ModelManifest.load(model_dir)
    tool_format = manifest.tool_format if manifest is not None else None
    grammars = Grammars(model_dir, int(model.config.vocab_size))
    out = []
    with torch.inference_mode():
        for request in requests:
            enc = tokenizer(
                render_prompt(tokenizer, request, tool_format), return_tensors="pt", add_special_tokens=False
            )
            width = enc["input_ids"].shape[1]
            key = grammar_key(request)
            shaping = Shaping(
                request, width, grammars=grammars, grammar=grammars.compiled(key) if key else None
            )
            gen: Any = model.generate(
                **enc,
                max_new_tokens=request.max_tokens,
                do_sample=False,
                logits_processor=[shaping],
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id,
                return_dict_in_generate=True,
                output_logits=True,
                output_scores=True,
            )
            ids = gen.sequences[0, width:]
            n = len(ids)
            if tokenizer.eos_token_id in ids.tolist():
                n = ids.tolist().index(tokenizer.eos_token_id) + 1
            text = tokenizer.decode(ids[:n], skip_special_tokens=True)
            ids = ids[:n].unsqueeze(-1)
            raw = torch.log_softmax(torch.stack(gen.logits, 1)[0, :n].float(), -1).gather(-1, ids)
            masked = torch.log_softmax(torch.stack(gen.scores, 1)[0, :n].float(), -1).gather(-1, ids)
            out.append((text, raw.squeeze(-1).tolist(), masked.squeeze(-1).tolist()))
    return out


def engines(settings: Any, per_family: int, student_dir: Path | None = None) -> dict[str, Any]:
    """``student_dir``: the student to measure (default: the preset's bootstrapped one)."""
    from router import SCORER_NAMES, all_scores, auroc, build_backend, confidence_logprobs, generate_requests
    from router._contract import check_answer, structural_agreement

    items = _requests(("ticket_json", "tool_call"), 2 * per_family, seed=3)
    requests = [r for _, r in items]
    student_dir = student_dir or settings.tier_dir("student")

    async def answers(backend: Any, reqs: list[Any]) -> tuple[list[Any], float]:
        try:
            t0 = time.perf_counter()
            gens = await generate_requests(backend, reqs, batch_size=16)
            return gens, time.perf_counter() - t0
        finally:
            await backend.close()

    teacher, _ = asyncio.run(
        answers(
            build_backend(settings.teacher, default_dir=settings.tier_dir("teacher"), model_id="teacher"),
            requests,
        )
    )
    student_config = settings.student.model_copy(update={"model_dir": student_dir})
    student_backend = build_backend(student_config, default_dir=student_dir, model_id="student")
    student, constrained_s = asyncio.run(answers(student_backend, requests))
    student_backend = build_backend(student_config, default_dir=student_dir, model_id="student")
    free, free_s = asyncio.run(answers(student_backend, [_plain(r) for r in requests]))
    rescored = raw_and_masked_logprobs(student_dir, requests)
    out: dict[str, Any] = {
        "engine": student_backend.__class__.__name__,
        "student": student_backend.version,
        "families": {},
    }
    for family in ("ticket_json", "tool_call"):
        idx = [i for i, (f, _) in enumerate(items) if f == family]
        agrees = [bool(structural_agreement(requests[i], student[i].text, teacher[i].text)) for i in idx]
        scores = [all_scores(confidence_logprobs(student[i], sampled=False)) for i in idx]
        rescored_agrees = [
            bool(structural_agreement(requests[i], rescored[i][0], teacher[i].text)) for i in idx
        ]
        raw = [all_scores(rescored[i][1]) for i in idx]
        masked = [all_scores(rescored[i][2]) for i in idx]
        ended = [i for i in idx if student[i].finish_reason == "stop"]
        t_ended = [i for i in idx if teacher[i].finish_reason == "stop"]
        out["families"][family] = {
            "requests": len(idx),
            "teacher_valid": _share(
                [check_answer(requests[i], teacher[i].text, "stop").valid for i in t_ended]
            ),
            "teacher_ended_on_its_own": len(t_ended) / len(idx),
            "student_valid": _share(
                [check_answer(requests[i], student[i].text, "stop").valid for i in ended]
            ),
            "student_ended_on_its_own": len(ended) / len(idx),
            "structural_agreement": sum(agrees) / len(idx),
            "auroc": {name: auroc([s[name] for s in scores], agrees) for name in SCORER_NAMES},
            # Raw vs grammar-masked log-probs of the same greedy answers (the served
            # scoring reads raw; this is the comparison behind that choice).
            "auroc_raw": {name: auroc([s[name] for s in raw], rescored_agrees) for name in SCORER_NAMES},
            "auroc_masked": {
                name: auroc([s[name] for s in masked], rescored_agrees) for name in SCORER_NAMES
            },
            "teacher_example": teacher[idx[0]].text,
            "student_example": student[idx[0]].text,
        }
    tokens = sum(g.completion_tokens for g in student)
    free_tokens = sum(g.completion_tokens for g in free)
    out["student_tokens_per_s"] = {
        "constrained": round(tokens / constrained_s, 1),
        "unconstrained": round(free_tokens / free_s, 1),
    }
    return out


# ---- 2. the loop ------------------------------------------------------------------------
class _Windows:
    """Keeps each scenario window's structured requests and response bodies."""

    def __init__(self) -> None:
        self.windows: list[tuple[str, list[Any], list[dict[str, Any]]]] = []

    def __call__(self, label: str, items: Sequence[Any], bodies: list[dict[str, Any]]) -> None:
        keep = [(i, b) for i, b in zip(items, bodies, strict=True) if i.contract]
        self.windows.append((label, [i for i, _ in keep], [b for _, b in keep]))


def _served_validity(items: Sequence[Any], bodies: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """(valid, judged) per kind over the served answers, checked here with ``jsonschema``
    against the wire body (not with the product's own contract check): a JSON answer that
    ended on its own must validate against its schema; a forced call must come back as
    exactly the allowed number of ``tool_calls`` naming an offered tool, its arguments
    valid against that tool's parameters."""
    import jsonschema

    out = {"json": {"valid": 0, "judged": 0}, "tool_call": {"valid": 0, "judged": 0}}
    for item, body in zip(items, bodies, strict=True):
        choice = body["choices"][0]
        fmt = item.contract.get("response_format")
        if fmt is not None:
            if choice["finish_reason"] != "stop":
                continue
            out["json"]["judged"] += 1
            try:
                jsonschema.validate(json.loads(choice["message"]["content"]), fmt["json_schema"]["schema"])
                out["json"]["valid"] += 1
            except (ValueError, jsonschema.ValidationError):
                pass
        elif item.contract.get("tools"):
            if choice["finish_reason"] == "length":
                continue
            out["tool_call"]["judged"] += 1
            params = {t["function"]["name"]: t["function"]["parameters"] for t in item.contract["tools"]}
            calls = choice["message"].get("tool_calls") or []
            most = 1 if item.contract.get("parallel_tool_calls") is False else len(params)
            try:
                ok = choice["finish_reason"] == "tool_calls" and 1 <= len(calls) <= most
                for call in calls:
                    fn = call["function"]
                    jsonschema.validate(json.loads(fn["arguments"]), params[fn["name"]])
            except (KeyError, ValueError, jsonschema.ValidationError):
                ok = False
            out["tool_call"]["valid"] += ok
    return out


def _ask(url: str, items: Sequence[Any], model: str) -> list[dict[str, Any]]:
    from distillery._scenario import post_all

    return asyncio.run(post_all(url, items, 8, model=model, max_tokens=MAX_TOKENS))


def _window_stats(url: str, items: Sequence[Any], bodies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per structured family: escalation and the served answers' structural agreement with
    the teacher's (as served in the window), and the ``final_student_*`` fields: the
    student serving when the scenario ended, asked by name on this window's prompts (its
    own agreement, and the AUROC of its confidence for agreeing). Asked after the scenario,
    so the drift window's prompts also measure the refreshed student on many prompts."""
    from distillery._workloads import answer_of
    from router import auroc

    references = _ask(url, items, "distillery-teacher")
    students = _ask(url, items, "distillery-student")
    out: dict[str, Any] = {}
    for family in sorted({i.route for i in items}):
        idx = [k for k, i in enumerate(items) if i.route == family]
        served = [answer_of(bodies[k]) for k in idx]
        refs = [answer_of(references[k])[0] for k in idx]
        escalated = [bool(info.get("escalated")) for _, info in served]
        agrees = [text == ref for (text, _), ref in zip(served, refs, strict=True)]
        kept = [a for a, e in zip(agrees, escalated, strict=True) if not e]
        own = [answer_of(students[k]) for k in idx]
        own_agrees = [text == ref for (text, _), ref in zip(own, refs, strict=True)]
        confidence = [float(info.get("confidence") or 0.0) for _, info in own]
        out[family] = {
            "requests": len(idx),
            "escalation_rate": round(sum(escalated) / len(idx), 4),
            "structural_agreement": round(sum(agrees) / len(idx), 4),
            "student_served_agreement": round(sum(kept) / len(kept), 4) if kept else None,
            "final_student_agreement": round(sum(own_agrees) / len(idx), 4),
            "final_student_auroc": auroc(confidence, own_agrees),
            "final_student_ended_on_its_own": round(
                sum(students[k]["choices"][0]["finish_reason"] in ("stop", "tool_calls") for k in idx)
                / len(idx),
                4,
            ),
        }
    out["validity"] = _served_validity(items, bodies)
    return out


def loop_run(var: Path, args: argparse.Namespace) -> dict[str, Any]:
    from deploy import ModelRegistry
    from distillery._scenario import run_scenario
    from distillery._stack import LocalStack, build_loop
    from distillery._workloads import workload_for
    from router import AgreementMetric

    # The teacher on vLLM (in its own deployment, continuous batching): on transformers it
    # queued the drift window's escalations past the request timeout on 2 cores.
    settings = _settings(
        var,
        server={"port": free_port(), "request_timeout_s": 300},
        teacher={"kind": "vllm", "num_threads": 1},
        feedback={"sample_rate": 0.2, "route_labeler": "demo:support_route_label"},
        loop={"nightly_at": None},
    )
    windows = _Windows()
    with LocalStack(settings) as stack:
        registry = ModelRegistry(stack.settings.resolved_registry_dir)
        loop = build_loop(stack.settings)
        started = time.monotonic()
        report = run_scenario(
            stack.url,
            loop,
            workload=workload_for("structured"),
            agreement=AgreementMetric(settings.agreement),
            drift_requests=args.drift_requests,
            window=args.window,
            pricing=settings.pricing,
            observer=windows,
            max_attempts=args.attempts,
        )
        scenario_s = round(time.monotonic() - started, 1)
        per_window = {
            label: _window_stats(stack.url, items, bodies) for label, items, bodies in windows.windows
        }
        promoted = [e for e in report.loop if e["result"] == "promoted"]
        model = registry.get(promoted[-1]["version"]) if promoted else None
    return {
        "scenario": report.to_dict(),
        "windows": per_window,
        "scenario_s": scenario_s,
        "gate": model.manifest.get("gate") if model else None,
        "promoted_dir": str(model.path) if model else None,
    }


def _engine_summary(engines: dict[str, Any], suffix: str) -> dict[str, Any]:
    families = engines["families"]
    tps = engines["student_tokens_per_s"]
    out: dict[str, Any] = {
        f"constrained_tokens_per_s_ratio{suffix}": round(tps["constrained"] / tps["unconstrained"], 3),
    }
    for family, kind in (("ticket_json", "json"), ("tool_call", "tool_call")):
        row = families[family]
        out[f"engine_agreement_{kind}{suffix}"] = row["structural_agreement"]
        out[f"auroc_raw_mean_logprob_{kind}{suffix}"] = row["auroc_raw"].get("mean_logprob")
        out[f"auroc_masked_mean_logprob_{kind}{suffix}"] = row["auroc_masked"].get("mean_logprob")
    return out


def _rate(window: dict[str, Any]) -> float:
    rows = [v for k, v in window.items() if k != "validity"]
    return round(
        sum(r["escalation_rate"] * r["requests"] for r in rows) / sum(r["requests"] for r in rows), 4
    )


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    engine_runs = [result["engines"], *([result["engines_after"]] if result.get("engines_after") else [])]
    validities = [
        row[key]
        for run in engine_runs
        for row in run["families"].values()
        for key in ("teacher_valid", "student_valid")
        if row[key] is not None
    ]
    summary: dict[str, Any] = {
        # Every engine answer (teacher, bootstrapped and refreshed student) that ended on
        # its own, JSON and tool calls, checked against its contract.
        "engine_validity": min(validities, default=None),
        **_engine_summary(result["engines"], "_before"),
    }
    if result.get("engines_after"):
        summary.update(_engine_summary(result["engines_after"], "_after"))
    loop = result.get("loop")
    if not loop:
        return summary
    labels = list(loop["windows"])
    drift = next(label for label in labels if label.startswith("drift"))
    before, after = loop["windows"][drift], loop["windows"][labels[-1]]

    def served(kind: str) -> float | None:
        valid = sum(w["validity"][kind]["valid"] for w in loop["windows"].values())
        judged = sum(w["validity"][kind]["judged"] for w in loop["windows"].values())
        return round(valid / judged, 4) if judged else None

    scenario = {w["label"]: w for w in loop["scenario"]["windows"]}
    summary.update(
        {
            "json_validity": served("json"),
            "tool_call_validity": served("tool_call"),
            "served_json_answers": sum(w["validity"]["json"]["judged"] for w in loop["windows"].values()),
            "served_tool_call_answers": sum(
                w["validity"]["tool_call"]["judged"] for w in loop["windows"].values()
            ),
            "structured_escalation_before": _rate(before),
            "structured_escalation_after": _rate(after),
            "structural_agreement_after": after["ticket_json"]["structural_agreement"],
            "tool_call_agreement_after": after["tool_call"]["structural_agreement"],
            "json_escalation_before": before["ticket_json"]["escalation_rate"],
            "json_escalation_after": after["ticket_json"]["escalation_rate"],
            "tool_call_escalation_before": before["tool_call"]["escalation_rate"],
            "tool_call_escalation_after": after["tool_call"]["escalation_rate"],
            "old_escalation_before": scenario[drift]["escalation_rate_old_skills"],
            "old_escalation_after": scenario[labels[-1]]["escalation_rate_old_skills"],
            "final_student_auroc_json": before["ticket_json"]["final_student_auroc"],
            "final_student_auroc_tool_call": before["tool_call"]["final_student_auroc"],
            "refresh_results": [e["result"] for e in loop["scenario"]["loop"]],
            "refresh_stages_s": [e["timings_s"] for e in loop["scenario"]["loop"]],
        }
    )
    return summary


def run(argv: list[str] | None = None) -> dict[str, Any]:
    from distillery._real_pair import ensure_real_pair

    quick = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(prog="python -m bench.structured")
    parser.add_argument("--per-family", type=int, default=24 if quick else 48)
    parser.add_argument("--window", type=int, default=80 if quick else 200)
    parser.add_argument("--drift-requests", type=int, default=200 if quick else 400)
    parser.add_argument("--attempts", type=int, default=2)
    parser.add_argument("--engine-only", action="store_true")
    args = parser.parse_args([] if argv is None else argv)
    var = Path(tempfile.mkdtemp(prefix="dst-"))
    settings = _settings(var)
    ensure_real_pair(settings)
    result: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "targets": TARGETS}
    result["engines"] = engines(settings, args.per_family)
    print(f"[engines] {json.dumps(result['engines'])}", flush=True)
    if not args.engine_only:
        result["loop"] = loop_run(var, args)
        print(f"[loop] {json.dumps(result['loop']['windows'])}", flush=True)
        if result["loop"]["promoted_dir"]:  # the same measurement on the refreshed student
            result["engines_after"] = engines(settings, args.per_family, Path(result["loop"]["promoted_dir"]))
            print(f"[engines after] {json.dumps(result['engines_after'])}", flush=True)
    result["summary"] = summarize(result)
    write_result(NAME, result)
    print(f"[summary] {json.dumps(result['summary'])}", flush=True)
    shutil.rmtree(var, ignore_errors=True)
    return result


if __name__ == "__main__":
    run(sys.argv[1:])
