"""Loop efficacy and cost on the drift scenario, the cascade frontier, refresh cycle time.

Stands up the whole stack as the e2e test does (Tansu broker, feedback consumer into
SQLite, the Serve app, the refresh loop with a live canary) and runs the bundled drift
scenario (``distillery._scenario.run_scenario``, the code behind ``distillery demo
scenario``). Measured:

* per window: escalation rate (drifted vs original skills), cost relative to teacher-only
  (``router.pricing.PricingConfig``: tokens x per-tier price, ``DISTILLERY_PRICING__*``),
  accuracy against the exact answer, and **agreement with the teacher**: the served answer
  equals what the teacher itself answers for the same prompt (the teacher is run offline on
  every served prompt after the scenario);
* an escalation-rate timeline in chunks of requests, with the refresh marked;
* the refresh cycle per stage (drift check, dataset, TRL, gate, register, canary) and the
  swap (until ``/healthz`` reports the new version), from the loop's own timings;
* the cascade frontier: on a fixed mixed-skill prompt set, the student's confidence and
  answer and the teacher's answer once, then the threshold swept offline (escalation
  share, agreement with the teacher, accuracy, cost vs teacher-only), for the student
  before and after the refresh, with the student-only and teacher-only points.

    python -m bench.loop [--window 400] [--drift-requests 3000] [--frontier-per-skill 250]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from bench._common import demo_stack, write_result
from common.model_dir import CALIBRATION_FILE

REPO = Path(__file__).resolve().parents[1]
NAME = "loop"
NEW = ("shift", "double")
TARGETS = {
    "escalation_new_skills_max": 0.10,
    "agreement_min": 0.95,
    "cost_vs_teacher_only_max": 0.15,
    "cycle_s_max": 300.0,
}


class _TimedLoop:
    """Wraps the refresh loop: wall clock of each tick, and the swap (promotion until the
    gateway's ``/healthz`` reports the new student version). Each tick is asked for, as
    ``distillery demo scenario`` asks the running stack's loop (a manual refresh: the
    default ``min_new_examples`` bars only drift- and nightly-triggered ones)."""

    def __init__(self, loop: Any, url: str, registry: Any) -> None:
        self._loop = loop
        self._url = url
        self._registry = registry
        self.ticks: list[dict[str, Any]] = []

    def tick(self) -> Any:
        self._registry.request_refresh(reason="bench.loop", actor="bench")
        started = time.time()
        event = self._loop.tick()
        ended = time.time()
        swap_s = None
        if event.result == "promoted":
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{self._url}/healthz", timeout=5).json().get("student") == event.version:
                        swap_s = round(time.time() - ended, 2)
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.ticks.append({"started": started, "ended": ended, "swap_s": swap_s, "result": event.result})
        return event


def _generate(model_dir: Path, prompts: Sequence[str]) -> list[Any]:
    from router import generate_prompts
    from router._transformers_backend import TransformersBackend

    backend = TransformersBackend(model_dir, num_threads=2)
    return asyncio.run(generate_prompts(backend, list(prompts), max_tokens=24, batch_size=128))


def _example(item: Any) -> Any:
    """A scenario ``WorkItem`` as the toy example it came from (prompt, answer, skill)."""
    from types import SimpleNamespace

    return SimpleNamespace(prompt=item.pair.prompt, answer=item.truth, skill=item.route)


def _rate(values: Sequence[bool]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _window_detail(
    label: str, examples: Sequence[Any], bodies: Sequence[dict[str, Any]], teacher: dict[str, str], chunk: int
) -> dict[str, Any]:
    served = [b["choices"][0]["text"] for b in bodies]
    esc = [bool(b["distillery"][0]["escalated"]) for b in bodies]
    agree = [s == teacher[e.prompt] for e, s in zip(examples, served, strict=True)]
    right = [s == e.answer for e, s in zip(examples, served, strict=True)]
    new = [e.skill in NEW for e in examples]

    def pick(values: Sequence[bool], group: bool | None) -> list[bool]:
        return [v for v, n in zip(values, new, strict=True) if group is None or n == group]

    chunks = []
    for i in range(0, len(bodies), chunk):
        sl = slice(i, i + chunk)
        n_new, e_new = new[sl], esc[sl]
        chunks.append(
            {
                "requests": len(e_new),
                "escalation": _rate(e_new),
                "escalation_new_skills": _rate([e for e, n in zip(e_new, n_new, strict=True) if n]),
                "escalation_old_skills": _rate([e for e, n in zip(e_new, n_new, strict=True) if not n]),
            }
        )
    return {
        "label": label,
        "requests": len(bodies),
        "agreement_with_teacher": _rate(agree),
        "agreement_new_skills": _rate(pick(agree, True)),
        "agreement_old_skills": _rate(pick(agree, False)),
        "agreement_on_student_answers": _rate([a for a, e in zip(agree, esc, strict=True) if not e]),
        "accuracy": _rate(right),
        "chunks": chunks,
    }


def frontier(
    examples: Sequence[Any],
    student: Sequence[Any],
    teacher: Sequence[Any],
    pricing: Any,
    scorer: str,
    calibrated: float,
) -> dict[str, Any]:
    """The threshold swept offline over one set of student/teacher generations, and the
    operating point at the version's ``calibrated`` threshold."""
    from router import get_scorer

    score = get_scorer(scorer)
    conf = [score(g.token_logprobs if g.text.strip() else []) for g in student]
    s_cost = [pricing.student.cost(g.prompt_tokens, g.completion_tokens) for g in student]
    t_cost = [pricing.teacher.cost(g.prompt_tokens, g.completion_tokens) for g in teacher]
    teacher_only = sum(t_cost)
    s_agree = [s.text == t.text for s, t in zip(student, teacher, strict=True)]
    s_right = [s.text == e.answer for s, e in zip(student, examples, strict=True)]
    t_right = [t.text == e.answer for t, e in zip(teacher, examples, strict=True)]
    new = [e.skill in NEW for e in examples]
    n = len(examples)

    def point(threshold: float) -> dict[str, Any]:
        esc = [c < threshold for c in conf]
        cost = sum(sc + (tc if e else 0.0) for sc, tc, e in zip(s_cost, t_cost, esc, strict=True))
        agree = [True if e else a for e, a in zip(esc, s_agree, strict=True)]
        right = [tr if e else sr for e, sr, tr in zip(esc, s_right, t_right, strict=True)]
        return {
            "threshold": threshold,
            "escalation": round(sum(esc) / n, 4),
            "escalation_new_skills": _rate([e for e, nw in zip(esc, new, strict=True) if nw]),
            "agreement": round(sum(agree) / n, 4),
            "accuracy": round(sum(right) / n, 4),
            "cost_vs_teacher_only": round(cost / teacher_only, 4),
        }

    qs = sorted(set(conf))
    picks = sorted({qs[int(i * (len(qs) - 1) / 80)] for i in range(81)} | {0.0, 1.000001})
    return {
        "curve": [point(t) for t in picks],
        "calibrated": point(calibrated),
        "student_only": {**point(0.0), "cost_vs_teacher_only": round(sum(s_cost) / teacher_only, 4)},
        "teacher_only": {
            "escalation": 1.0,
            "agreement": 1.0,
            "accuracy": round(sum(t_right) / n, 4),
            "cost_vs_teacher_only": 1.0,
        },
    }


def run(argv: list[str] | None = None) -> dict[str, Any]:
    from demo import ALL_SKILLS, sample_examples
    from deploy import ModelRegistry
    from distillery._scenario import run_scenario
    from distillery._stack import build_loop
    from retrain import ensure_registry

    quick = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(prog="python -m bench.loop")
    parser.add_argument("--window", type=int, default=200 if quick else 400)
    parser.add_argument("--drift-requests", type=int, default=3000)
    parser.add_argument("--frontier-per-skill", type=int, default=100 if quick else 250)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models")
    args = parser.parse_args([] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="dbl-"))
    observed: list[tuple[str, Sequence[Any], list[dict[str, Any]]]] = []
    with demo_stack(workdir / "v", args.models_dir, feedback={"sample_rate": 0.2}) as stack:
        settings = stack.settings
        url = stack.url
        registry = ModelRegistry(settings.resolved_registry_dir)
        initial = ensure_registry(registry, settings.tier_dir("student"))
        loop = build_loop(settings)  # `distillery run`'s own wiring and defaults
        timed = _TimedLoop(loop, url, registry)
        started = time.monotonic()
        try:
            report = run_scenario(
                url,
                timed,  # duck-typed: only tick() is called
                drift_requests=args.drift_requests,
                window=args.window,
                pricing=settings.pricing,
                observer=lambda label, ex, bodies: observed.append(
                    (label, [_example(i) for i in ex], bodies)
                ),
            )
        finally:
            scenario_s = time.monotonic() - started
    refreshed = registry.current()
    assert refreshed is not None
    teacher_dir = settings.tier_dir("teacher")

    # Agreement with the teacher on every served prompt (the teacher run offline, greedy).
    prompts = sorted({e.prompt for _, ex, _ in observed for e in ex})
    t0 = time.monotonic()
    teacher_text = {p: g.text for p, g in zip(prompts, _generate(teacher_dir, prompts), strict=True)}
    teacher_s = time.monotonic() - t0
    details = [_window_detail(lbl, ex, bodies, teacher_text, args.chunk) for lbl, ex, bodies in observed]
    windows = []
    for stats, detail in zip(report.windows, details, strict=True):
        windows.append({**asdict(stats), **{k: v for k, v in detail.items() if k != "label"}})

    # The cascade frontier before and after the refresh, on one fixed mixed prompt set.
    skills = [s.name for s in ALL_SKILLS]
    examples = sample_examples(skills, args.frontier_per_skill * len(skills), random.Random(2024))
    fp = [e.prompt for e in examples]
    teacher_gens = _generate(teacher_dir, fp)
    scorer = settings.cascade.scorer
    fronts = {}
    for tag, model in (("before", initial), ("after", refreshed)):
        cal = json.loads((model.path / CALIBRATION_FILE).read_text())
        gens = _generate(model.path, fp)
        f = frontier(examples, gens, teacher_gens, settings.pricing, scorer, float(cal["threshold"]))
        fronts[tag] = {"version": model.version, **f}

    cycles = []
    for event, tick in zip(report.loop, timed.ticks, strict=True):
        stages = dict(event["timings_s"])
        if tick["swap_s"] is not None:
            stages["swap"] = tick["swap_s"]
        cycles.append(
            {
                "result": event["result"],
                "version": event["version"],
                "stages_s": stages,
                "total_s": round(sum(stages.values()), 2),
                "tick_wall_s": round(tick["ended"] - tick["started"], 2),
                "detail": event["detail"],
            }
        )
    promoted = next((c for c in cycles if c["result"] == "promoted"), None)
    first_detect_to_swap = None
    if promoted is not None and timed.ticks:
        last = timed.ticks[len(cycles) - 1]
        first_detect_to_swap = round(last["ended"] + (last["swap_s"] or 0) - timed.ticks[0]["started"], 2)
    result = {
        "benchmark": NAME,
        "config": {
            "window": args.window,
            "drift_requests": args.drift_requests,
            "frontier_prompts": len(examples),
            "chunk": args.chunk,
            "pricing": settings.pricing.model_dump(),
            "scorer": scorer,
        },
        "targets": TARGETS,
        "windows": windows,
        "loop": report.loop,
        "cycles": cycles,
        "first_detection_to_swap_s": first_detect_to_swap,
        "frontier": fronts,
        "timings_s": {"scenario": round(scenario_s, 1), "teacher_offline": round(teacher_s, 1)},
    }
    for w in windows:
        print(
            f"[{w['label']}] esc new {w['escalation_rate_new_skills']} old {w['escalation_rate_old_skills']} "
            f"agree {w['agreement_with_teacher']} acc {w['accuracy']} cost {w['cost_vs_teacher_only']:.3f}",
            flush=True,
        )
    print(f"cycles: {cycles}", flush=True)
    print(f"wrote {write_result(NAME, result)}")
    return result


if __name__ == "__main__":
    run(sys.argv[1:])
