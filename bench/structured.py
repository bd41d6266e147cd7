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
   student's tokens/s with and without the constraint on the same prompts;
2. the loop through the ``distillery run`` stack (Tansu, the consumer, Serve, the stack's
   own refresh loop via ``build_loop``): before drift, drift onto the structured families,
   one automatic refresh (drift check -> dataset -> TRL -> gate -> canary -> promote),
   after. Escalation per structured family before/after, structural agreement of served
   answers with the teacher's (asked through ``distillery-teacher``), validity of every
   served JSON answer.

Raw numbers: ``bench/results/structured.json`` (top-level ``summary``: ``json_validity``,
``structured_escalation_before``/``_after``, ``structural_agreement_after``,
``tool_call_agreement_after``, ...); report section in docs/benchmarks.md.
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
def engines(settings: Any, per_family: int) -> dict[str, Any]:
    from router import SCORER_NAMES, all_scores, auroc, build_backend, confidence_logprobs, generate_requests
    from router._contract import check_answer, structural_agreement

    items = _requests(("ticket_json", "tool_call"), 2 * per_family, seed=3)
    requests = [r for _, r in items]

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
    student_backend = build_backend(
        settings.student, default_dir=settings.tier_dir("student"), model_id="student"
    )
    student, constrained_s = asyncio.run(answers(student_backend, requests))
    student_backend = build_backend(
        settings.student, default_dir=settings.tier_dir("student"), model_id="student"
    )
    free, free_s = asyncio.run(answers(student_backend, [_plain(r) for r in requests]))
    out: dict[str, Any] = {"engine": student_backend.__class__.__name__, "families": {}}
    for family in ("ticket_json", "tool_call"):
        idx = [i for i, (f, _) in enumerate(items) if f == family]
        agrees = [bool(structural_agreement(requests[i], student[i].text, teacher[i].text)) for i in idx]
        scores = [all_scores(confidence_logprobs(student[i], sampled=False)) for i in idx]
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


def _served_validity(items: Sequence[Any], bodies: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(valid, judged) over served JSON answers that ended on their own."""
    import jsonschema

    valid = judged = 0
    for item, body in zip(items, bodies, strict=True):
        fmt = item.contract.get("response_format")
        choice = body["choices"][0]
        if fmt is None or choice["finish_reason"] != "stop":
            continue
        judged += 1
        try:
            jsonschema.validate(json.loads(choice["message"]["content"]), fmt["json_schema"]["schema"])
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    return valid, judged


def _ask(url: str, items: Sequence[Any], model: str) -> list[dict[str, Any]]:
    from distillery._scenario import post_all

    return asyncio.run(post_all(url, items, 8, model=model, max_tokens=MAX_TOKENS))


def _window_stats(url: str, items: Sequence[Any], bodies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per structured family: escalation, served answers' structural agreement with the
    teacher's, and (the student asked by name) AUROC of its confidence for agreeing."""
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
            "student_agreement": round(sum(own_agrees) / len(idx), 4),
            "student_auroc": auroc(confidence, own_agrees),
            "student_ended_on_its_own": round(
                sum(students[k]["choices"][0]["finish_reason"] in ("stop", "tool_calls") for k in idx)
                / len(idx),
                4,
            ),
        }
    valid, judged = _served_validity(items, bodies)
    out["json_validity"] = {"valid": valid, "judged": judged}
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
        gate = registry.get(promoted[-1]["version"]).manifest.get("gate") if promoted else None
    return {"scenario": report.to_dict(), "windows": per_window, "scenario_s": scenario_s, "gate": gate}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    engine = result["engines"]["families"]
    summary: dict[str, Any] = {
        "engine_json_validity": min(
            (
                v
                for v in (engine["ticket_json"]["teacher_valid"], engine["ticket_json"]["student_valid"])
                if v is not None
            ),
            default=None,
        ),
        "auroc_mean_logprob_json": engine["ticket_json"]["auroc"].get("mean_logprob"),
        "auroc_mean_logprob_tool_call": engine["tool_call"]["auroc"].get("mean_logprob"),
        "constrained_tokens_per_s_ratio": round(
            result["engines"]["student_tokens_per_s"]["constrained"]
            / result["engines"]["student_tokens_per_s"]["unconstrained"],
            3,
        ),
    }
    loop = result.get("loop")
    if not loop:
        return summary
    labels = list(loop["windows"])
    drift = next(label for label in labels if label.startswith("drift"))
    before, after = loop["windows"][drift], loop["windows"][labels[-1]]
    valid = sum(w["json_validity"]["valid"] for w in loop["windows"].values())
    judged = sum(w["json_validity"]["judged"] for w in loop["windows"].values())

    def esc(window: dict[str, Any]) -> float:
        rows = [v for k, v in window.items() if k != "json_validity"]
        return round(
            sum(r["escalation_rate"] * r["requests"] for r in rows) / sum(r["requests"] for r in rows), 4
        )

    summary.update(
        {
            "json_validity": round(valid / judged, 4) if judged else None,
            "structured_escalation_before": esc(before),
            "structured_escalation_after": esc(after),
            "structural_agreement_after": after["ticket_json"]["structural_agreement"],
            "tool_call_agreement_after": after["tool_call"]["structural_agreement"],
            "json_escalation_before": before["ticket_json"]["escalation_rate"],
            "json_escalation_after": after["ticket_json"]["escalation_rate"],
            "tool_call_escalation_before": before["tool_call"]["escalation_rate"],
            "tool_call_escalation_after": after["tool_call"]["escalation_rate"],
            "student_auroc_json_after": after["ticket_json"]["student_auroc"],
            "student_auroc_tool_call_after": after["tool_call"]["student_auroc"],
            "refresh_results": [e["result"] for e in loop["scenario"]["loop"]],
        }
    )
    return summary


def run(argv: list[str] | None = None) -> dict[str, Any]:
    from distillery._real_pair import ensure_real_pair

    quick = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(prog="python -m bench.structured")
    parser.add_argument("--per-family", type=int, default=24 if quick else 48)
    parser.add_argument("--window", type=int, default=60 if quick else 120)
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
    result["summary"] = summarize(result)
    write_result(NAME, result)
    print(f"[summary] {json.dumps(result['summary'])}", flush=True)
    shutil.rmtree(var, ignore_errors=True)
    return result


if __name__ == "__main__":
    run(sys.argv[1:])
