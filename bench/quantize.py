"""fp32 against each CPU quantization scheme, on the demo student and the real student.

Side by side in one run, per student:

1. **Gate** (``retrain.quantize_version``, what ``distillery models quantize`` runs): each
   scheme's candidate recalibrated and judged against its parent on the regression suite
   (teacher labels): agreement with the parent's own answers, with the teacher, ECE,
   the recalibrated threshold and the escalation rate at it, the verdict.
2. **Engine** (one fresh process per variant, so resident memory is its own): tokens/s of
   the suite's requests at batch 16, peak resident memory, AUROC of the confidence for
   "agrees with the teacher".
3. **Gateway** (one ``LocalStack`` per student; each variant promoted through the
   registry, the production hot-swap path): tokens/s and p50/p99 at 1 and 8 concurrent
   clients on the tier-pinned student model, two rounds, variants in turn.

    python -m bench.quantize [--only demo|real]

Writes ``bench/results/quantize.json`` with ``summary``: the real student's best CPU
scheme (the fastest that passes the gate, else the fastest), its ``tokens_per_s_ratio``
vs fp32 through the gateway at 8 clients, and its ``agreement_with_parent``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import REPO, RESULTS, free_port, machine_info, percentile, write_result

NAME = "quantize"
SCHEMES = ("int8_dynamic", "int8_dynamic_per_channel", "bf16")
STUDENTS = {
    "demo": {"models_dir": REPO / "var" / "models", "preset": "demo"},
    "real": {"models_dir": REPO / "var" / "models" / "smollm2", "preset": "smollm2"},
}
REQUESTS = {"demo": {1: 100, 8: 300}, "real": {1: 24, 8: 64}}
ROUNDS = 2


def _settings(which: str, var: Path, **overrides: Any) -> Any:
    from distillery.settings import load_settings

    spec = STUDENTS[which]
    return load_settings(
        preset=str(spec["preset"]),
        models_dir=str(spec["models_dir"]),
        var_dir=str(var),
        student={"kind": "transformers", "num_threads": 1},
        **overrides,
    )


# ---- 2. one variant in its own process -----------------------------------------------------
def _engine(model_dir: Path, suite_file: Path, out: Path, max_tokens: int) -> None:
    """``--engine``: load, answer the suite at batch 16, report speed, memory, confidences."""
    from retrain import load_suite
    from router import generate_requests, get_scorer
    from router._transformers_backend import TransformersBackend

    pairs = load_suite(suite_file)
    backend = TransformersBackend(model_dir, num_threads=2)
    requests = [p.to_request(max_tokens) for p in pairs]
    asyncio.run(generate_requests(backend, requests[:16], batch_size=16))  # warm-up
    t0 = time.perf_counter()
    gens = asyncio.run(generate_requests(backend, requests, batch_size=16))
    wall = time.perf_counter() - t0
    score = get_scorer("mean_logprob")
    out.write_text(
        json.dumps(
            {
                "texts": [g.text for g in gens],
                "confidence": [score(g.token_logprobs) for g in gens],
                "tokens_per_s": sum(g.completion_tokens for g in gens) / wall,
                # resident after answering (the model as served) and the peak (the fp32
                # weights are loaded before a scheme is applied)
                "rss_mb": _rss_mb(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "quantization": backend.quantization,
            }
        )
    )


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _engine_run(model_dir: Path, suite_file: Path, work: Path, max_tokens: int) -> dict[str, Any]:
    out = work / f"engine-{model_dir.name}.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "bench.quantize", "--engine", str(model_dir), str(suite_file), str(out)]
    subprocess.run([*cmd, str(max_tokens)], check=True, cwd=REPO, env=env)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


# ---- one student ------------------------------------------------------------------------------
def _student(which: str, work: Path) -> dict[str, Any]:
    from bench.overhead import MAX_TOKENS, _demo_workload, _measure, _real_workload
    from deploy import ModelRegistry
    from distillery._scenario import wait_for_version
    from distillery._stack import LocalStack
    from retrain import build_suite, ensure_registry, quantize_version, save_pairs
    from router import AgreementMetric, auroc

    var = work / which
    settings = _settings(which, var, server={"port": free_port()}, feedback={"enabled": False})
    agree = AgreementMetric(settings.agreement)
    registry = ModelRegistry(settings.resolved_registry_dir)
    parent = ensure_registry(registry, settings.tier_dir("student"))
    suite = build_suite(settings.gate, parent.path)
    suite_file = work / f"{which}-suite.jsonl"
    save_pairs(suite, suite_file)
    budget = settings.gate.max_new_tokens or 24

    variants: dict[str, dict[str, Any]] = {"fp32": {"version": parent.version, "dir": str(parent.path)}}
    for scheme in SCHEMES:
        print(f"[{which}] gating {scheme}", flush=True)
        q = quantize_version(
            registry,
            parent.version,
            scheme,
            workdir=work / f"{which}-candidates",
            gate_config=settings.gate,
            suite=suite,
            agreement=agree,
        )
        g = q.gate
        variants[scheme] = {
            "version": q.version,
            "dir": str(q.model.path),
            "passed": q.passed,
            "reasons": q.reasons,
            "agreement_with_parent": round(q.agreement_with_parent, 4),
            "gate_seconds": q.timings_s,
            "threshold": g.candidate.threshold,
            "ece": round(g.candidate.ece, 4),
            "escalation_rate": g.candidate.escalation_rate,
            "agreement_with_teacher": round(g.candidate.suite_accuracy, 4),
        }

    judged = g.current  # the parent's evaluation: the same suite in every scheme's gate
    variants["fp32"].update(
        threshold=judged.threshold,
        ece=round(judged.ece, 4),
        escalation_rate=judged.escalation_rate,
        agreement_with_teacher=round(judged.suite_accuracy, 4),
        agreement_with_parent=1.0,
    )
    parent_texts: list[str] = []
    for name, v in variants.items():
        print(f"[{which}] engine {name}", flush=True)
        e = _engine_run(Path(v["dir"]), suite_file, work, budget)
        texts = e["texts"]
        if name == "fp32":
            parent_texts = texts
        correct = [agree(t, p.completion) for t, p in zip(texts, suite, strict=True)]
        v["engine"] = {
            "tokens_per_s": round(e["tokens_per_s"], 1),
            "rss_mb": round(e["rss_mb"], 1),
            "peak_rss_mb": round(e["peak_rss_mb"], 1),
            "auroc": auroc(e["confidence"], correct),
            "agreement_with_parent_engine": round(
                sum(agree(t, p) for t, p in zip(texts, parent_texts, strict=True)) / len(texts), 4
            ),
            "quantization": e["quantization"],
        }
        v["size_on_disk_mb"] = _dir_mb(Path(v["dir"]))
        v["threshold_shift"] = round(v["threshold"] - variants["fp32"]["threshold"], 6)

    workload = _demo_workload(settings.resolved_models_dir) if which == "demo" else _real_workload()
    gateway: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in variants}
    with LocalStack(settings, broker=False, consumer=False) as stack:
        for rnd in range(ROUNDS):
            for name, v in variants.items():
                registry.promote(v["version"], reason="bench", actor="bench")
                wait_for_version(stack.url, v["version"], timeout_s=180.0)
                for c, n in REQUESTS[which].items():
                    print(f"[{which}] gateway round {rnd} {name} c={c}", flush=True)
                    m = _measure(stack.url, workload, "distillery-student", c, n, work)
                    gateway[name].setdefault(str(c), []).append(m)
        registry.promote(parent.version, reason="bench done", actor="bench")
    for name, v in variants.items():
        v["gateway"] = {
            c: {
                "tokens_per_s": round(percentile([r["tokens_per_s"] for r in rounds], 0.5), 1),
                "p50_ms": round(percentile([r["p50_ms"] for r in rounds], 0.5), 2),
                "p99_ms": round(percentile([r["p99_ms"] for r in rounds], 0.5), 2),
                "rounds": rounds,
            }
            for c, rounds in gateway[name].items()
        }
    return {"suite": len(suite), "max_tokens": MAX_TOKENS, "variants": variants}


def summarize(students: dict[str, Any]) -> dict[str, Any] | None:
    real = students.get("real")
    if real is None:
        return None
    v = real["variants"]
    base = v["fp32"]["gateway"]["8"]["tokens_per_s"]
    rows = [(name, v[name]["gateway"]["8"]["tokens_per_s"] / base, v[name]) for name in SCHEMES if name in v]
    passing = [r for r in rows if r[2]["passed"]]
    name, ratio, best = max(passing or rows, key=lambda r: r[1])
    fast_name, fast_ratio, fastest = max(rows, key=lambda r: r[1])
    return {
        "scheme": name,
        "tokens_per_s_ratio": round(ratio, 3),
        "agreement_with_parent": best["agreement_with_parent"],
        "passed_gate": best["passed"],
        "chosen_as": "the fastest scheme the gate passed"
        if passing
        else "the fastest (none passed the gate)",
        "fastest": {
            "scheme": fast_name,
            "tokens_per_s_ratio": round(fast_ratio, 3),
            "agreement_with_parent": fastest["agreement_with_parent"],
            "passed_gate": fastest["passed"],
        },
        "targets": {"tokens_per_s_ratio": 1.3, "agreement_with_parent": 0.98},
    }


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.quantize")
    parser.add_argument("--only", choices=sorted(STUDENTS))
    args = parser.parse_args([] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="dbq-"))
    previous = RESULTS / f"{NAME}.json"
    students: dict[str, Any] = {}
    if args.only and previous.is_file():  # keep the other student's numbers
        students = json.loads(previous.read_text()).get("students", {})
    for which in [args.only] if args.only else list(STUDENTS):
        students[which] = _student(which, work)
    result = {
        "benchmark": NAME,
        "machine": machine_info(),
        "schemes": list(SCHEMES),
        "students": students,
        "summary": summarize(students),
    }
    print(f"wrote {write_result(NAME, result)}")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--engine":
        _engine(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
    else:
        run(sys.argv[1:])
