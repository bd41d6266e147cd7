"""Live quality on the demo: what the shadow audits find and cost, and the canary they guard.

One ``distillery run`` stack (embedded broker, consumer into SQLite, the Serve app) on the
demo models, audits at their defaults (``audit.share`` 2%, ``canary_share`` 25%, at most
2 teacher calls a second):

* **audits** (``--requests`` over the drifted mix, all four skills, the student knows
  two): missed escalations found per 1,000 answers the student served (disagreeing
  audits), the miss rate they estimate (disagreed / audited, with its Wilson interval),
  checked against the ground truth the toy domain has (``demo.solve``) on every answer the
  student served; the teacher cost the audits added as a share of teacher-only cost
  (``distillery_audit_cost_total`` / ``distillery_teacher_equivalent_cost_total``, the
  same window), audits dropped by reason, and the audit share realised.
* **latency**: the same load with audits off, at the default 2% and at 100%, one stack
  each, one after the other (client p50/p99): the audit is offered after the response is
  sent, so no answer waits for one; what audits cost the serving path is CPU (at 100% the
  teacher does its escalations' work and the audits' on the same cores).
* **canary**: an overconfident candidate (the student's weights, a calibration that trusts
  every answer) goes through the live canary: it escalates less (the escalation rule
  alone would promote it) and agrees less; the verdict with audits is recorded, with the
  escalation-only verdict on the same window. A healthy candidate (the student itself,
  re-registered) goes through the same canary as the control.

    python -m bench.live_quality [--requests 12000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import REPO, demo_stack, percentile, write_result
from bench._traffic import Traffic, copy_with_threshold, mixed_demo_prompt

NAME = "live_quality"


def _metrics(url: str) -> Any:
    from deploy import parse_live_metrics

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return text, parse_live_metrics(text)


def _sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def _drive(url: str, examples: list[Any], concurrency: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(ex: Any) -> None:
            async with sem:
                started = time.perf_counter()
                r = await client.post(
                    f"{url}/v1/completions",
                    json={"model": "distillery", "prompt": ex.prompt, "max_tokens": 16},
                )
                elapsed = time.perf_counter() - started
                body = r.json()
                out.append(
                    {
                        "status": r.status_code,
                        "latency_s": elapsed,
                        "tier": body["distillery"][0]["tier"] if r.status_code == 200 else None,
                        "text": body["choices"][0]["text"] if r.status_code == 200 else None,
                        "skill": ex.skill,
                        "word": ex.word,
                    }
                )

        await asyncio.gather(*(one(e) for e in examples))
    return out


def _examples(n: int, seed: int) -> list[Any]:
    from demo import ALL_SKILLS, sample_examples

    return sample_examples([s.name for s in ALL_SKILLS], n, random.Random(seed))


def _wilson(k: float, n: float) -> tuple[float, float]:
    from deploy import wilson_interval

    return wilson_interval(k, n)


def _audits(url: str, requests: int, concurrency: int, seed: int) -> dict[str, Any]:
    """One drifted-traffic window at the default audit share."""
    from demo import solve

    text0, live0 = _metrics(url)
    answers = asyncio.run(_drive(url, _examples(requests, seed), concurrency))
    time.sleep(5)  # the last audits finish (off the hot path, after the responses)
    text1, live1 = _metrics(url)
    version = next(v for v in live1.versions if live1.stats(v).answers > live0.stats(v).answers)
    stats = live1.stats(version).minus(live0.stats(version))
    served = [a for a in answers if a["tier"] == "student"]
    wrong = [a for a in served if (a["text"] or "").strip() != solve(a["skill"], a["word"])]
    disagreed = stats.audited - stats.agreed
    low, high = _wilson(disagreed, stats.audited)
    audit_cost = _sample(text1, "distillery_audit_cost_total") - _sample(text0, "distillery_audit_cost_total")
    teacher_only = _sample(text1, "distillery_teacher_equivalent_cost_total") - _sample(
        text0, "distillery_teacher_equivalent_cost_total"
    )
    spent = _sample(text1, "distillery_cost_total") - _sample(text0, "distillery_cost_total")
    dropped = {
        reason: _sample(text1, "distillery_audits_dropped_total", reason=reason)
        - _sample(text0, "distillery_audits_dropped_total", reason=reason)
        for reason in ("rate_limited", "queue_full", "teacher_unavailable", "teacher_error", "closed")
    }
    return {
        "requests": requests,
        "ok": sum(1 for a in answers if a["status"] == 200),
        "student_served": len(served),
        "audited": stats.audited,
        "agreed": stats.agreed,
        "disagreed": disagreed,
        "audit_share_realised": stats.audited / len(served) if served else 0.0,
        "dropped": dropped,
        "missed_found_per_1000_served": 1000 * disagreed / len(served) if served else 0.0,
        "missed_rate_estimate_per_1000": 1000 * disagreed / stats.audited if stats.audited else None,
        "missed_rate_interval_per_1000": [round(1000 * low, 1), round(1000 * high, 1)],
        "missed_rate_true_per_1000": 1000 * len(wrong) / len(served) if served else 0.0,
        "audit_cost": audit_cost,
        "teacher_only_cost": teacher_only,
        "spent_cost": spent,
        "audit_cost_vs_teacher_only": audit_cost / teacher_only if teacher_only else 0.0,
        "spend_vs_teacher_only": spent / teacher_only if teacher_only else 0.0,
        "student_version": version,
    }


def _latency_point(models: Path, var: Path, share: float, requests: int, concurrency: int) -> dict[str, Any]:
    audit = {"share": share, "canary_share": share, "max_per_s": 1e3, "burst": 1000, "queue_size": 4096}
    with demo_stack(var, models, audit=audit) as stack:
        asyncio.run(_drive(stack.url, _examples(100, 1), concurrency))  # warm-up
        answers = asyncio.run(_drive(stack.url, _examples(requests, 2), concurrency))
        time.sleep(2)
        text, _ = _metrics(stack.url)
    lat = [a["latency_s"] for a in answers if a["status"] == 200]
    if not lat:
        statuses = sorted({a["status"] for a in answers})
        raise RuntimeError(f"no request succeeded at audit share {share} (statuses {statuses})")
    return {
        "requests": len(answers),
        "ok": len(lat),
        "p50_ms": round(1000 * percentile(lat, 0.5), 2),
        "p99_ms": round(1000 * percentile(lat, 0.99), 2),
        "audits": _sample(text, "distillery_audits_total"),
    }


def _latency(models: Path, workdir: Path, requests: int, concurrency: int) -> dict[str, Any]:
    """Client latency with audits off, at 2% and on every answer, each on a fresh stack in
    its own process (one Ray session per process), one after the other."""
    out: dict[str, Any] = {}
    for label, share in (("audits_off", 0.0), ("audits_default", 0.02), ("audits_all", 1.0)):
        result = workdir / f"{label}.json"
        cmd = [sys.executable, "-m", "bench.live_quality", "--latency-point", str(share)]
        cmd += ["--out", str(result), "--models-dir", str(models), "--latency-requests", str(requests)]
        cmd += ["--concurrency", str(concurrency), "--var", str(workdir / label)]
        subprocess.run(cmd, check=True, cwd=REPO)
        out[label] = json.loads(result.read_text())
    return out


def _canary(stack: Any, workdir: Path) -> dict[str, Any]:
    from deploy import CanaryController, ModelRegistry, judge_canary
    from retrain import ensure_registry

    settings = stack.settings
    registry = ModelRegistry(settings.resolved_registry_dir)
    initial = ensure_registry(registry, settings.tier_dir("student"))
    wrong_dir = copy_with_threshold(initial.path, workdir / "overconfident", 0.0)
    healthy_dir = workdir / "healthy"
    shutil.copytree(initial.path, healthy_dir)
    candidates = {
        "overconfident": registry.register(wrong_dir, "student-overconfident", {"parent": initial.version}),
        "healthy": registry.register(healthy_dir, "student-healthy", {"parent": initial.version}),
    }
    config = settings.canary.model_copy(update={"share": 0.3, "min_requests": 40, "timeout_s": 300})

    def fetch() -> str:
        return httpx.get(f"{stack.url}/metrics", timeout=10).text

    out: dict[str, Any] = {}
    for label, model in candidates.items():
        started = time.monotonic()
        with Traffic(stack.url, workers=4, model="distillery", prompt=mixed_demo_prompt) as traffic:
            verdict, cur, can = CanaryController(registry, fetch, config, poll_s=1.0).run(model.version)
        low, high = _wilson(can.agreed, can.audited)
        out[label] = {
            "verdict": verdict,
            "escalation_only_verdict": judge_canary(cur, can, config),
            "seconds": round(time.monotonic() - started, 1),
            "canary": {
                "answers": can.answers,
                "escalation_rate": can.escalation_rate,
                "audited": can.audited,
                "agreement": can.agreement,
                "agreement_interval": [low, high],
            },
            "current": {
                "answers": cur.answers,
                "escalation_rate": cur.escalation_rate,
                "audited": cur.audited,
                "agreement": cur.agreement,
            },
            "reason": registry.audit()[-1]["reason"],
            "statuses": dict(traffic.statuses),
            "client_errors": len(traffic.errors),
        }
        registry.promote(initial.version, reason="bench: back to the initial student", actor="bench")
    return out


def run(argv: list[str] | None = None) -> dict[str, Any]:
    quick = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(prog="python -m bench.live_quality")
    parser.add_argument("--requests", type=int, default=3000 if quick else 12000)
    parser.add_argument("--latency-requests", type=int, default=300 if quick else 800)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models")
    parser.add_argument("--latency-point", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--var", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.latency_point is not None:  # a child of _latency: one stack, one share
        point = _latency_point(
            args.models_dir, args.var, args.latency_point, args.latency_requests, args.concurrency
        )
        args.out.write_text(json.dumps(point))
        return point
    workdir = Path(tempfile.mkdtemp(prefix="dblq-"))
    try:
        with demo_stack(workdir / "v", args.models_dir) as stack:
            audit_cfg = stack.settings.audit.model_dump()
            asyncio.run(_drive(stack.url, _examples(100, 7), args.concurrency))  # warm-up
            audits = _audits(stack.url, args.requests, args.concurrency, seed=11)
            canary = _canary(stack, workdir)
        wrong = canary["overconfident"]
        summary = {
            "missed_escalations_per_1000": round(audits["missed_found_per_1000_served"], 2),
            "audit_cost_vs_teacher_only": round(audits["audit_cost_vs_teacher_only"], 5),
            "confidently_wrong_candidate_rolled_back": wrong["verdict"] == "rollback",
            "escalation_only_rule_would_promote_it": wrong["escalation_only_verdict"] == "promote",
            "healthy_candidate_promoted": canary["healthy"]["verdict"] == "promote",
            "audit_share": audit_cfg["share"],
        }
        payload: dict[str, Any] = {
            "summary": summary,
            "audit_config": audit_cfg,
            "audits": audits,
            "latency": None,
            "canary": canary,
        }
        write_result(NAME, payload)  # kept if the latency part fails
        payload["latency"] = _latency(args.models_dir, workdir, args.latency_requests, args.concurrency)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    path = write_result(NAME, payload)
    print(json.dumps(summary, indent=2))
    print(f"-> {path}")
    return payload


if __name__ == "__main__":
    run(sys.argv[1:])
