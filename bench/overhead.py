"""Serving fast path: Distillery against vLLM's own OpenAI server on the same student.

What a user compares is the server they would run instead, so every target here is a
separate server process tree started as a user starts it, on the same student directory
with the same engine settings, measured one after the other in one run ((a) and (c)
next to each other, the order reversed every other round) under the same closed-loop
load from a separate process (``bench._load``):

* (a) ``vllm_server``: ``python -m vllm.entrypoints.openai.api_server`` (the baseline);
* (b) ``bare``: the student ``ModelServer`` as its own Serve deployment behind a bare
  ``__call__`` ingress (no FastAPI, no cascade, no feedback), on the fast path;
* (c) ``gateway``: ``distillery run`` as shipped (HAProxy ingress, throughput-optimized
  Serve, the student's engine in the ingress replica, feedback through the embedded
  broker): the full cascade;
* (c') ``gateway_deployment``: the same, the student as its own deployment (the Serve
  YAML's placement): what the in-ingress placement saves;
* (d) ``gateway_before``: ``distillery run`` in the previous default (Serve's Python
  proxy, Ray's worker priority, the student as its own deployment).

The demo student gets completions of prompts it answers confidently (the cascade keeps
them; ``tiers`` in the results show it), the real student (``var/models/smollm2``, when
built) chat requests of its bootstrapped support families with the student tier pinned
(``distillery-student``): its own confidence would send some to the teacher, which is not
what is compared. CPU per request per process comes from ``/proc`` before and after each
measured phase (the load generator excluded).

    python -m bench.overhead [--rounds 2] [--levels 1,16,64] [--only demo|real]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    REPO,
    RESULTS,
    ServedProcess,
    VLLMServer,
    distillery_run,
    free_port,
    gateway_env,
    percentile,
    run_load,
    write_result,
)

NAME = "overhead"
TARGETS: dict[str, str] = {  # run order: (a) and (c) next to each other
    "vllm_server": "(a) vLLM's own OpenAI server",
    "gateway": "(c) Distillery cascade as shipped (fast path, student in the ingress)",
    "bare": "(b) student Serve deployment, bare ingress (fast path)",
    "gateway_deployment": "(c') cascade, fast path, student as its own deployment",
    "gateway_before": "(d) cascade in the previous default mode",
}
REAL_TARGETS = ("vllm_server", "gateway", "gateway_before")  # (a), (c) adjacent
MAX_TOKENS = 16
REQUESTS = {1: 300, 16: 800, 64: 1200}
QUICK_REQUESTS = {1: 100, 16: 300, 64: 400}
REAL_REQUESTS = {1: 40, 16: 160, 64: 256}  # ~3 / 15 / 19 req/s on 2 cores: ~15 s per point


# ---- servers ---------------------------------------------------------------------------
def _start(target: str, models_dir: Path, var: Path, logs: Path, preset: str) -> tuple[ServedProcess, str]:
    """Starts ``target`` (its log under ``logs``); returns it and its base URL."""
    student = models_dir / "student"
    if target == "vllm_server":
        server = VLLMServer(student, logs / "vllm_server.log", served_name="student")
        return server, server.url
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if target == "bare":
        env = gateway_env(var, models_dir, before=False, placement="deployment")
        argv = [sys.executable, "-m", "bench.overhead", "--serve-bare", str(port)]

        def bare_ready() -> bool:
            body = {"prompt": "warm up", "max_tokens": 1}
            return httpx.post(f"{url}/v1/completions", json=body, timeout=5).status_code == 200

        return ServedProcess(argv, env, logs / "bare.log", bare_ready), url
    env = gateway_env(
        var,
        models_dir,
        before=target == "gateway_before",
        placement="ingress" if target == "gateway" else "deployment",
    )
    return distillery_run(env, preset, logs / f"{target}.log")


class BareIngress:
    """The Serve proxy (HAProxy here) -> this ``__call__`` -> the student ``ModelServer``."""

    def __init__(self, student: Any) -> None:
        self._generate = student.options(method_name="generate")

    async def __call__(self, request: Any) -> dict[str, Any]:
        from router import GenerationRequest

        body = await request.json()
        messages = body.get("messages")
        if messages:
            from router import ChatTurn

            turns = tuple(ChatTurn(role=m["role"], content=m["content"]) for m in messages)
            req = GenerationRequest(messages=turns, max_tokens=int(body.get("max_tokens", 16)))
        else:
            req = GenerationRequest(prompt=body["prompt"], max_tokens=int(body.get("max_tokens", 16)))
        gen = await self._generate.remote(req)
        return {"text": gen.text, "usage": {"completion_tokens": gen.completion_tokens}}


def _serve_bare(port: int) -> int:
    """``--serve-bare PORT``: the student deployment exactly as ``build_app`` configures it
    (``student_placement: deployment``), behind ``BareIngress``, until SIGTERM."""
    import threading

    from ray import serve

    from distillery.settings import load_settings
    from gateway._model_server import ModelServer, tier_spec
    from gateway.app import start_ray

    settings = load_settings(server={"port": port}, follow_registry=False)
    start_ray(settings)
    deployment: Any = serve.deployment
    student = deployment(
        ModelServer,
        name="student",
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": 0},
    ).bind(tier_spec(settings, "student"))
    ingress = deployment(
        BareIngress, name="bare_ingress", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0}
    )
    serve.run(ingress.bind(student), name="bare", route_prefix="/")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    return 0


# ---- workloads ---------------------------------------------------------------------------
def _demo_workload(models_dir: Path, n: int = 64) -> dict[str, Any]:
    """Completion prompts of the student's own skills that its calibrated threshold keeps."""
    import asyncio

    from common.model_dir import CalibrationRecord
    from demo import STUDENT_SKILLS, sample_examples
    from router import generate_prompts, get_scorer
    from router._transformers_backend import TransformersBackend

    student = models_dir / "student"
    cal = CalibrationRecord.load(student)
    assert cal is not None, f"{student} has no calibration"
    score = get_scorer(cal.scorer)
    backend = TransformersBackend(student, num_threads=1)
    candidates = [e.prompt for e in sample_examples(STUDENT_SKILLS, n * 2, random.Random(7))]
    gens = asyncio.run(generate_prompts(backend, candidates, max_tokens=MAX_TOKENS))
    kept = [p for p, g in zip(candidates, gens, strict=True) if score(g.token_logprobs) >= cal.threshold]
    return {
        "prompts": kept[:n],
        "cascade_model": "distillery",
        "kept": len(kept),
        "candidates": len(candidates),
    }


def _real_workload(n: int = 64) -> dict[str, Any]:
    from demo._support import SUPPORT_BOOTSTRAP, sample_support

    convs = [r.as_dicts() for r in sample_support(SUPPORT_BOOTSTRAP, n, random.Random(7))]
    return {"conversations": convs, "cascade_model": "distillery-student"}


# ---- measuring -------------------------------------------------------------------------------
_GROUPS = (
    ("ServeReplica:distillery:ingress", "ingress replica"),
    ("ServeReplica:bare:bare_ingress", "ingress replica"),
    ("ServeReplica:distillery:student", "student replica"),
    ("ServeReplica:bare:student", "student replica"),
    ("ServeReplica:distillery:teacher", "teacher replica"),
    ("VLLM::EngineCore", "vLLM engine core"),
    ("VLLM::Worker", "vLLM worker"),
    ("vllm.entrypoints.openai.api_server", "vLLM API server"),
    ("haproxy", "HAProxy"),
    ("ProxyActor", "Serve proxy"),
    ("ServeController", "Serve controller"),
    ("distillery.cli", "distillery run (consumer, loop)"),
    ("bench.overhead --serve-bare", "bench driver"),
    ("tansu", "Tansu broker"),
)


def _cpu_by_process() -> dict[str, float]:
    """CPU seconds so far per process group; the load generator and this process excluded."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if not cmd or "bench._load" in cmd:
            continue
        name = next((label for key, label in _GROUPS if key in cmd), "other")
        out[name] = out.get(name, 0.0) + (int(stat[11]) + int(stat[12])) / tick
    return out


def _measure(url: str, workload: dict[str, Any], model: str, c: int, n: int, work: Path) -> dict[str, Any]:
    chat = "conversations" in workload
    spec = {
        "url": f"{url}/v1/{'chat/completions' if chat else 'completions'}",
        "prompts": workload.get("prompts"),
        "conversations": workload.get("conversations"),
        "concurrency": c,
        "requests": n,
        "warmup": max(20, c * 2),
        "model": model,
        "max_tokens": MAX_TOKENS,
    }
    before = _cpu_by_process()
    raw = run_load(spec, work)
    after = _cpu_by_process()
    lat, total = raw["latencies_s"], int(spec["warmup"]) + n
    cpu = {k: (after[k] - before.get(k, 0.0)) * 1000 / total for k in after}
    return {
        "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
        "rps": round(len(lat) / raw["wall_s"], 1),
        "tokens_per_s": round(raw["completion_tokens"] / raw["wall_s"], 1),
        "statuses": raw["statuses"],
        "tiers": raw["tiers"],
        "cpu_ms_per_request": {
            k: round(v, 3) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.01
        },
    }


def _median(values: list[float]) -> float:
    return round(percentile(values, 0.5), 2)


def _suite(
    label: str, models_dir: Path, preset: str, workload: dict[str, Any], targets: tuple[str, ...], args: Any
) -> dict[str, Any]:
    levels = [int(x) for x in args.levels.split(",")]
    sizes = QUICK_REQUESTS if os.environ.get("DISTILLERY_BENCH_QUICK") else REQUESTS
    if label == "real":
        sizes = REAL_REQUESTS
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {t: {c: [] for c in levels} for t in targets}
    for r in range(args.rounds):
        # (a) and (c) side by side in every round, the order reversed every other round
        order = list(targets if r % 2 == 0 else reversed(targets))
        for target in order:
            work = Path(tempfile.mkdtemp(prefix=f"bench-{target}-"))
            logs = REPO / "var" / "bench-logs"
            logs.mkdir(parents=True, exist_ok=True)
            print(f"  [{label}] round {r + 1}: {target}", flush=True)
            server, url = _start(target, models_dir, work, logs, preset)
            try:
                server.wait()
                model = "student" if target == "vllm_server" else workload["cascade_model"]
                _measure(url, workload, model, 4, 20 if label == "real" else 100, work)  # warm every path
                for c in levels:
                    point = _measure(url, workload, model, c, sizes.get(c, 500), work)
                    runs[target][c].append(point)
                    print(f"    c={c}: p50 {point['p50_ms']} ms, {point['rps']} req/s", flush=True)
            finally:
                server.stop()
                shutil.rmtree(work, ignore_errors=True)
    table: dict[str, dict[str, Any]] = {}
    for target in targets:
        table[target] = {}
        for c in levels:
            pts = runs[target][c]
            cpu_keys = {k for p in pts for k in p["cpu_ms_per_request"]}
            table[target][str(c)] = {
                "p50_ms": _median([p["p50_ms"] for p in pts]),
                "p99_ms": _median([p["p99_ms"] for p in pts]),
                "rps": _median([p["rps"] for p in pts]),
                "tokens_per_s": _median([p["tokens_per_s"] for p in pts]),
                "cpu_ms_per_request": {
                    k: _median([p["cpu_ms_per_request"].get(k, 0.0) for p in pts]) for k in sorted(cpu_keys)
                },
                "rounds": pts,
            }
    return {
        "models_dir": str(models_dir),
        "levels": levels,
        "targets": table,
        "workload": _describe(workload),
    }


def _describe(workload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in workload.items() if k not in ("prompts", "conversations")} | {
        "kind": "chat" if "conversations" in workload else "completions",
        "distinct": len(workload.get("prompts") or workload.get("conversations") or []),
    }


def _ratios(suite: dict[str, Any]) -> dict[str, Any]:
    t = suite["targets"]
    a, c = t["vllm_server"], t["gateway"]
    out: dict[str, Any] = {}
    if "16" in a:
        out["gateway_over_vllm_rps_c16"] = round(c["16"]["rps"] / a["16"]["rps"], 3)
    if "1" in a:
        out["gateway_minus_vllm_p50_ms_c1"] = round(c["1"]["p50_ms"] - a["1"]["p50_ms"], 2)
    if "16" in a:  # each round's pair, measured minutes apart: the machine drifts between rounds
        pairs = zip(c["16"]["rounds"], a["16"]["rounds"], strict=True)
        out["gateway_over_vllm_rps_c16_by_round"] = [round(x["rps"] / y["rps"], 3) for x, y in pairs]
    if "gateway_before" in t and "16" in a:
        out["before_over_vllm_rps_c16"] = round(t["gateway_before"]["16"]["rps"] / a["16"]["rps"], 3)
    return out


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--only", choices=("demo", "real"), default=None)
    parser.add_argument("--targets", default=",".join(TARGETS), help="the demo suite's targets")
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv if argv is not None else [])
    if args.serve_bare is not None:
        raise SystemExit(_serve_bare(args.serve_bare))
    from distillery.settings import load_settings

    models = load_settings().resolved_models_dir.resolve()
    result: dict[str, Any] = {"benchmark": NAME, "args": vars(args), "targets_legend": TARGETS, "suites": {}}
    if args.only in (None, "demo"):
        print("  demo student: picking prompts it keeps", flush=True)
        targets = tuple(t for t in TARGETS if t in args.targets.split(","))
        result["suites"]["demo"] = _suite("demo", models, "demo", _demo_workload(models), targets, args)
        result["suites"]["demo"]["ratios"] = _ratios(result["suites"]["demo"])
    real = models / "smollm2"
    if args.only in (None, "real") and (real / "student" / "config.json").is_file():
        result["suites"]["real"] = _suite("real", real, "smollm2", _real_workload(), REAL_TARGETS, args)
        result["suites"]["real"]["ratios"] = _ratios(result["suites"]["real"])
    for suite in result["suites"].values():
        suite["args"] = vars(args)
    # a run of one suite keeps the other's last results
    previous = (
        json.loads((RESULTS / f"{NAME}.json").read_text()) if (RESULTS / f"{NAME}.json").is_file() else {}
    )
    for name, kept in (previous.get("suites") or {}).items():
        if kept:
            result["suites"].setdefault(name, kept)
    demo = result["suites"].get("demo")
    if demo is not None:
        t = demo["targets"]
        result["summary"] = {
            "vllm_server_rps_c16": t["vllm_server"]["16"]["rps"],
            "gateway_rps_c16": t["gateway"]["16"]["rps"],
            "vllm_server_p50_ms_c1": t["vllm_server"]["1"]["p50_ms"],
            "gateway_p50_ms_c1": t["gateway"]["1"]["p50_ms"],
            **demo["ratios"],
        }
    print(f"  wrote {write_result(NAME, result)}", flush=True)


if __name__ == "__main__":
    run(sys.argv[1:])
