"""fp32 against each CPU quantization scheme, on the demo student and the real student.

Two families, each against its own fp32 parent on the same engine: the torch schemes
(``int8_dynamic``, ``int8_dynamic_per_channel``, ``bf16``) on the transformers engine, and
the compressed-tensors checkpoints (``w8a8``, ``w4a16``, written by llmcompressor in its
own environment) on vLLM, calibrated on the prompts the parent answered through the live
stack (a calibration pass of the workload's requests, other than the measured ones, is
served and consumed into the store first).

Side by side in one run, per student and family:

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
CHECKPOINT_SCHEMES = ("w8a8", "w4a16")
VLLM_PARENT = "fp32_vllm"
CALIBRATION_REQUESTS = {"demo": 128, "real": 256}
STUDENTS = {
    "demo": {"models_dir": REPO / "var" / "models", "preset": "demo"},
    "real": {"models_dir": REPO / "var" / "models" / "smollm2", "preset": "smollm2"},
}
REQUESTS = {"demo": {1: 100, 8: 300, 16: 400}, "real": {1: 24, 8: 64, 16: 96}}
ROUNDS = 2


def _settings(which: str, var: Path, engine: str = "transformers", **overrides: Any) -> Any:
    from distillery.settings import load_settings

    spec = STUDENTS[which]
    student: dict[str, Any] = {"kind": engine}
    if engine == "transformers":
        student["num_threads"] = 1
    return load_settings(
        preset=str(spec["preset"]),
        models_dir=str(spec["models_dir"]),
        var_dir=str(var),
        student=student,
        **overrides,
    )


# ---- 2. one variant in its own process -----------------------------------------------------
def _engine(
    model_dir: Path, suite_file: Path, out: Path, max_tokens: int, kind: str = "transformers"
) -> None:
    """``--engine``: load, answer the suite at batch 16, report speed, memory, confidences."""
    from retrain import load_suite
    from router import BackendConfig, build_backend, generate_requests, get_scorer
    from router._transformers_backend import TransformersBackend

    pairs = load_suite(suite_file)
    requests = [p.to_request(max_tokens) for p in pairs]

    async def answer() -> tuple[Any, list[Any], float]:
        # One event loop for the engine's life: vLLM's output handler lives on the loop
        # that first used it.
        backend: Any = (
            TransformersBackend(model_dir, num_threads=2)
            if kind == "transformers"
            else build_backend(
                BackendConfig(kind="vllm", model_dir=model_dir), default_dir=model_dir, model_id="q"
            )
        )
        await generate_requests(backend, requests[:16], batch_size=16)  # warm-up
        t0 = time.perf_counter()
        gens = await generate_requests(backend, requests, batch_size=16)
        return backend, gens, time.perf_counter() - t0

    backend, gens, wall = asyncio.run(answer())
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
    if kind != "transformers":
        backend.close()


def _rss_mb() -> float:
    """Resident memory of this process and its children (vLLM's engine core runs in one)."""
    import psutil

    me = psutil.Process()
    return sum(p.memory_info().rss for p in (me, *me.children(recursive=True))) / 2**20


def _engine_run(
    model_dir: Path, suite_file: Path, work: Path, max_tokens: int, kind: str = "transformers"
) -> dict[str, Any]:
    out = work / f"engine-{model_dir.name}-{kind}.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "bench.quantize", "--engine", str(model_dir), str(suite_file), str(out)]
    subprocess.run([*cmd, str(max_tokens), kind], check=True, cwd=REPO, env=env)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _dir_mb(path: Path) -> float:
    from common.model_dir import directory_bytes

    return round(directory_bytes(path) / 2**20, 1)


# ---- one student ------------------------------------------------------------------------------
def _student(which: str, work: Path) -> dict[str, Any]:
    from bench.overhead import MAX_TOKENS

    torch_family, suite = _family(which, work, "transformers", "fp32", SCHEMES)
    vllm_family, _ = _family(which, work, "vllm", VLLM_PARENT, CHECKPOINT_SCHEMES)
    return {"suite": suite, "max_tokens": MAX_TOKENS, "variants": {**torch_family, **vllm_family}}


def _calibration_workload(which: str, models_dir: Path) -> dict[str, Any]:
    """Requests for the calibration pass: the workload's kind, other prompts than the
    measured ones where the workload has a seed (the real pair's support families)."""
    import random

    from bench.overhead import _demo_workload
    from demo._support import SUPPORT_BOOTSTRAP, sample_support

    if which == "demo":
        return _demo_workload(models_dir, CALIBRATION_REQUESTS[which])
    rows = sample_support(SUPPORT_BOOTSTRAP, CALIBRATION_REQUESTS[which], random.Random(13))
    return {"conversations": [r.as_dicts() for r in rows]}


def _serve_calibration_pass(which: str, settings: Any, work: Path) -> dict[str, Any]:
    """The parent serves the calibration requests through the live stack (broker, consumer,
    store); returns when the store holds them."""
    from bench.overhead import _measure
    from distillery._stack import LocalStack
    from feedback import open_store

    workload = _calibration_workload(which, settings.resolved_models_dir)
    n = CALIBRATION_REQUESTS[which]
    with LocalStack(settings) as stack:
        m = _measure(stack.url, workload, "distillery", 4, n, work)
        store = open_store(settings.store_dsn)
        deadline, last = time.monotonic() + 120, -1
        while time.monotonic() < deadline:
            count = store.count()
            if count == last:
                break
            last = count
            time.sleep(3)
        store.close()
    return {"requests": n, "statuses": m["statuses"], "tiers": m["tiers"], "stored_events": last}


def _family(
    which: str, work: Path, engine: str, parent_name: str, schemes: tuple[str, ...]
) -> tuple[dict[str, dict[str, Any]], int]:
    from bench.overhead import _demo_workload, _measure, _real_workload
    from deploy import ModelRegistry
    from distillery._scenario import wait_for_version
    from distillery._stack import LocalStack, serving_factory
    from feedback import open_store
    from retrain import build_suite, ensure_registry, quantize_version, save_pairs
    from retrain._gate import transformers_factory
    from router import AgreementMetric, auroc

    var = work / f"{which}-{engine}"
    checkpoints = engine == "vllm"
    feedback = {"sample_rate": 1.0} if checkpoints else {"enabled": False}
    settings = _settings(which, var, engine, server={"port": free_port()}, feedback=feedback)
    agree = AgreementMetric(settings.agreement)
    registry = ModelRegistry(settings.resolved_registry_dir)
    parent = ensure_registry(registry, settings.tier_dir("student"))
    suite = build_suite(settings.gate, parent.path)
    suite_file = work / f"{which}-suite.jsonl"
    save_pairs(suite, suite_file)
    budget = settings.gate.max_new_tokens or 24

    variants: dict[str, dict[str, Any]] = {
        parent_name: {"version": parent.version, "dir": str(parent.path), "engine_kind": engine}
    }
    if checkpoints:
        print(f"[{which}] calibration pass through the live stack", flush=True)
        variants[parent_name]["calibration_pass"] = _serve_calibration_pass(which, settings, work)
    store = open_store(settings.store_dsn) if checkpoints else None
    factory = serving_factory(settings) if checkpoints else transformers_factory
    for scheme in schemes:
        print(f"[{which}] quantizing and gating {scheme}", flush=True)
        q = quantize_version(
            registry,
            parent.version,
            scheme,
            workdir=work / f"{which}-candidates",
            gate_config=settings.gate,
            store=store,
            suite=suite,
            agreement=agree,
            backend_factory=factory,
            quantize_config=settings.quantize,
        )
        g = q.gate
        manifest_q = q.model.manifest.get("quantization") or {}
        variants[scheme] = {
            "version": q.version,
            "dir": str(q.model.path),
            "engine_kind": engine,
            "parent": parent_name,
            "passed": q.passed,
            "reasons": q.reasons,
            "agreement_with_parent": round(q.agreement_with_parent, 4),
            "gate_seconds": q.timings_s,
            "quantize_seconds": q.timings_s.get("quantize"),
            "calibration": manifest_q.get("calibration"),
            "method": manifest_q.get("method"),
            "threshold": g.candidate.threshold,
            "ece": round(g.candidate.ece, 4),
            "escalation_rate": g.candidate.escalation_rate,
            "agreement_with_teacher": round(g.candidate.suite_accuracy, 4),
        }
    if store is not None:
        store.close()

    judged = g.current  # the parent's evaluation: the same suite in every scheme's gate
    variants[parent_name].update(
        threshold=judged.threshold,
        ece=round(judged.ece, 4),
        escalation_rate=judged.escalation_rate,
        agreement_with_teacher=round(judged.suite_accuracy, 4),
        agreement_with_parent=1.0,
    )
    parent_texts: list[str] = []
    for name, v in variants.items():
        print(f"[{which}] engine {name}", flush=True)
        e = _engine_run(Path(v["dir"]), suite_file, work, budget, engine)
        texts = e["texts"]
        if name == parent_name:
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
        v["threshold_shift"] = round(v["threshold"] - variants[parent_name]["threshold"], 6)

    workload = _demo_workload(settings.resolved_models_dir) if which == "demo" else _real_workload()
    gateway: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in variants}
    quiet = settings.model_copy(update={"feedback": settings.feedback.model_copy(update={"enabled": False})})
    with LocalStack(quiet, broker=False, consumer=False) as stack:
        for rnd in range(ROUNDS):
            for name, v in variants.items():
                registry.promote(v["version"], reason="bench", actor="bench")
                wait_for_version(stack.url, v["version"], timeout_s=300.0)
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
    return variants, len(suite)


def _ratio(v: dict[str, Any], name: str, base: str, c: str) -> float | None:
    if c not in v[name].get("gateway", {}) or c not in v[base].get("gateway", {}):
        return None
    return round(v[name]["gateway"][c]["tokens_per_s"] / v[base]["gateway"][c]["tokens_per_s"], 3)


def summarize(students: dict[str, Any]) -> dict[str, Any] | None:
    """The real student's schemes, each against the fp32 parent on its own engine
    (``fp32`` on transformers for the torch schemes, ``fp32_vllm`` for the checkpoints):
    the best is the fastest at 8 clients the gate passed, else the fastest."""
    real = students.get("real")
    if real is None:
        return None
    v = real["variants"]
    schemes: dict[str, dict[str, Any]] = {}
    for name in (*SCHEMES, *CHECKPOINT_SCHEMES):
        if name not in v:
            continue
        base = v[name].get("parent", "fp32")
        schemes[name] = {
            "engine": v[name].get("engine_kind", "transformers"),
            "against": base,
            "tokens_per_s_ratio": _ratio(v, name, base, "8"),
            "tokens_per_s_ratio_c16": _ratio(v, name, base, "16"),
            "tokens_per_s_ratio_vs_transformers_fp32": _ratio(v, name, "fp32", "8"),
            "agreement_with_parent": v[name]["agreement_with_parent"],
            "passed_gate": v[name]["passed"],
            "size_ratio": round(v[name]["size_on_disk_mb"] / v[base]["size_on_disk_mb"], 3),
        }
    rows = [(k, r) for k, r in schemes.items() if r["tokens_per_s_ratio"] is not None]
    targets = {"tokens_per_s_ratio": 1.3, "agreement_with_parent": 0.98, "size_ratio": 0.5}

    def meets(r: dict[str, Any]) -> bool:
        return bool(
            r["passed_gate"]
            and r["tokens_per_s_ratio"] >= targets["tokens_per_s_ratio"]
            and r["agreement_with_parent"] >= targets["agreement_with_parent"]
            and r["size_ratio"] <= targets["size_ratio"]
        )

    meeting = [row for row in rows if meets(row[1])]
    passing = [row for row in rows if row[1]["passed_gate"]]
    name, best = max(meeting or passing or rows, key=lambda row: row[1]["tokens_per_s_ratio"])
    fast_name, fastest = max(rows, key=lambda row: row[1]["tokens_per_s_ratio"])
    chosen_as = (
        "the fastest scheme that meets every target"
        if meeting
        else "the fastest scheme the gate passed"
        if passing
        else "the fastest (none passed)"
    )
    return {
        "scheme": name,
        "tokens_per_s_ratio": best["tokens_per_s_ratio"],
        "agreement_with_parent": best["agreement_with_parent"],
        "passed_gate": best["passed_gate"],
        "size_ratio": best["size_ratio"],
        "chosen_as": chosen_as,
        "fastest": {"scheme": fast_name, **fastest},
        "schemes": schemes,
        "targets": targets,
        "met_by": [k for k, r in rows if meets(r)],
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
        students[which] = {**_student(which, work), "machine": machine_info()}
    result = {
        "benchmark": NAME,
        "machine": machine_info(),
        "schemes": [*SCHEMES, *CHECKPOINT_SCHEMES],
        "students": students,
        "summary": summarize(students),
    }
    print(f"wrote {write_result(NAME, result)}")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--engine":
        _engine(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        run(sys.argv[1:])
