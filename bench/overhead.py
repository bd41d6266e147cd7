"""Cascade overhead: what the gateway adds on top of the student it fronts.

Three targets under the same fixed closed-loop concurrency, same prompts (``upper`` and
``reverse`` prompts the student answers confidently, so the cascade never escalates):

* (a) ``inproc``: the student ``TransformersBackend`` called in this process, with an
  asyncio batcher of the Serve batcher's settings (max batch 16, 5 ms wait): the floor.
* (b) ``bare``: a bench-only Serve app, a plain ``__call__`` ingress -> the student
  ``ModelServer`` deployment (same batching) over a cached handle: no FastAPI, no cascade,
  no feedback, no metrics.
* (c) ``gateway``: the full Serve app (``gateway.app.build_app``) with feedback on (Tansu
  broker, consumer into SQLite), on ``/v1/completions``.

(b) and (c) run in one Ray session, side by side, interleaved in rounds; the load comes
from a separate process (``bench._load``, aiohttp) over loopback. Unless ``--no-profile``, a
py-spy recording of the gateway's ingress replica is taken during an extra (c) run and
its hottest frames are summarised.

    python -m bench.overhead [--concurrency 1,16] [--requests 600] [--rounds 2] [--no-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from bench._common import RESULTS, BackgroundConsumer, MicroBatcher, percentile, write_result
from router import Generation, GenerationRequest

REPO = Path(__file__).resolve().parents[1]
NAME = "overhead"
TARGETS = ("inproc", "bare", "gateway_before", "gateway")
SERVED = ("bare", "gateway_before", "gateway")
LABELS = {
    "inproc": "(a) student backend in-process",
    "bare": "(b) student Serve deployment over HTTP",
    "gateway_before": "(c) before: ingress on Serve's default threads",
    "gateway": "(c) full gateway (cascade)",
}
MAX_TOKENS = 16


# ---- (a) in-process ------------------------------------------------------------------
def _confident_prompts(student_dir: Path, n: int, seed: int) -> tuple[list[str], dict[str, Any]]:
    """``n`` on-skill prompts the student keeps (confidence >= its calibrated threshold)."""
    import random

    from demo import STUDENT_SKILLS, sample_examples
    from router import generate_prompts, get_scorer
    from router._transformers_backend import TransformersBackend

    cal = json.loads((student_dir / "calibration.json").read_text())
    score = get_scorer(cal["scorer"])
    backend = TransformersBackend(student_dir, num_threads=1)
    candidates = [e.prompt for e in sample_examples(STUDENT_SKILLS, int(n * 1.5) + 20, random.Random(seed))]
    gens = asyncio.run(generate_prompts(backend, candidates, max_tokens=MAX_TOKENS))
    kept = [p for p, g in zip(candidates, gens, strict=True) if score(g.token_logprobs) >= cal["threshold"]]
    info = {"candidates": len(candidates), "kept": len(kept), "threshold": cal["threshold"]}
    return kept[:n], info


def _run_inproc(
    student_dir: Path, prompts: list[str], concurrency: int, n: int, warmup: int
) -> dict[str, Any]:
    from router import GenerationRequest
    from router._transformers_backend import TransformersBackend

    backend = TransformersBackend(student_dir, num_threads=1)  # as the Serve student replica

    async def go() -> dict[str, Any]:
        batcher = MicroBatcher(backend, 16, 0.005)
        counter = iter(range(warmup + n))
        latencies: list[float] = []
        started: list[float] = []

        async def worker() -> None:
            for i in counter:
                if i == warmup:
                    started.append(time.perf_counter())
                req = GenerationRequest(prompt=prompts[i % len(prompts)], max_tokens=MAX_TOKENS)
                t0 = time.perf_counter()
                await batcher.generate(req)
                if i >= warmup:
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {
            "latencies_s": latencies,
            "statuses": {"200": len(latencies)},
            "tiers": {"student": len(latencies)},
            "wall_s": time.perf_counter() - started[0],
        }

    return asyncio.run(go())


# ---- (b) bare Serve app ------------------------------------------------------------
class BareIngress:
    """Proxy -> this deployment's ``__call__`` -> the student ``ModelServer``; nothing else
    (no FastAPI, no validation models, no cascade, no feedback, no metrics)."""

    def __init__(self, student: DeploymentHandle[Any]) -> None:
        self._generate = student.options(method_name="generate")

    async def __call__(self, request: Any) -> dict[str, Any]:
        body = await request.json()
        req = GenerationRequest(prompt=body["prompt"], max_tokens=int(body.get("max_tokens", 16)))
        gen: Generation = await self._generate.remote(req)
        return {"text": gen.text, "usage": {"completion_tokens": gen.completion_tokens}}


def build_bare_app(settings: Any) -> Any:
    """The student deployment exactly as ``gateway.app.build_app`` configures it."""
    from gateway._deployments import ModelServer
    from gateway.rollout import StudentRollout

    deployment: Any = serve.deployment
    cfg = settings.student
    student = deployment(
        ModelServer,
        name="student",
        num_replicas=cfg.num_replicas,
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": 0},
        user_config=StudentRollout().model_dump(),
    ).bind("student", cfg, str(settings.tier_dir("student")), None, settings.registry_poll_s)
    ingress = deployment(
        BareIngress, name="bare_ingress", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0}
    )
    return ingress.bind(student)


# ---- load, stats ---------------------------------------------------------------------
_COMPONENTS = {
    "ServeReplica:distillery:ingress": "gateway ingress",
    "ServeReplica:distillery:student": "gateway student",
    "ServeReplica:distillery:teacher": "gateway teacher",
    "ServeReplica:gw_before:ingress": "gateway_before ingress",
    "ServeReplica:gw_before:student": "gateway_before student",
    "ServeReplica:gw_before:teacher": "gateway_before teacher",
    "ServeReplica:bare:bare_ingress": "bare ingress",
    "ServeReplica:bare:student": "bare student",
    "ProxyActor": "Serve proxy",
    "ServeController": "Serve controller",
    "raylet": "raylet",
    "gcs_server": "GCS",
}


def _cpu_by_component() -> dict[str, float]:
    """CPU seconds (user + system) so far of each process named in ``_COMPONENTS``, and of
    this one (the driver: the feedback consumer thread, Ray's log forwarding)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = "driver" if int(pid_dir.name) == os.getpid() else None
        for key, label in _COMPONENTS.items():
            if key in cmd:
                name = label
                break
        if name is not None:
            out[name] = out.get(name, 0.0) + (int(stat[11]) + int(stat[12])) / tick  # utime + stime
    return out


def _load(
    url: str, prompts: list[str], concurrency: int, n: int, warmup: int, workdir: Path
) -> dict[str, Any]:
    spec = {
        "url": url,
        "prompts": prompts,
        "concurrency": concurrency,
        "requests": n,
        "warmup": warmup,
        "model": "distillery",
        "max_tokens": MAX_TOKENS,
    }
    spec_file = workdir / f"spec-{time.time_ns()}.json"
    out_file = spec_file.with_suffix(".out.json")
    spec_file.write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "bench._load", str(spec_file), str(out_file)], check=True, cwd=REPO)
    result: dict[str, Any] = json.loads(out_file.read_text())
    return result


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [x for r in runs for x in r["latencies_s"]]
    statuses: Counter[str] = Counter()
    tiers: Counter[str] = Counter()
    for r in runs:
        statuses.update(r["statuses"])
        tiers.update(r["tiers"])
    wall = sum(r["wall_s"] for r in runs)
    cpu: dict[str, float] = {}
    for r in runs:
        for k, v in r.get("cpu_ms_per_request", {}).items():
            cpu[k] = cpu.get(k, 0.0) + v / len(runs)
    return {
        "n": len(lat),
        "p50_ms": round(percentile(lat, 0.5) * 1000, 3),
        "p90_ms": round(percentile(lat, 0.9) * 1000, 3),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 3),
        "mean_ms": round(sum(lat) / len(lat) * 1000, 3),
        "max_ms": round(max(lat) * 1000, 3),
        "throughput_rps": round(len(lat) / wall, 1),
        "statuses": dict(statuses),
        "tiers": dict(tiers),
        "cpu_ms_per_request": {k: round(v, 3) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])},
        "rounds": [
            {
                "p50_ms": round(percentile(r["latencies_s"], 0.5) * 1000, 3),
                "p99_ms": round(percentile(r["latencies_s"], 0.99) * 1000, 3),
                "throughput_rps": round(len(r["latencies_s"]) / r["wall_s"], 1),
            }
            for r in runs
        ],
        "latencies_ms": [round(x * 1000, 3) for x in lat],
    }


def _ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    a, b, c = rows["inproc"], rows["bare"], rows["gateway"]
    return {
        "c_minus_b_p50_ms": round(c["p50_ms"] - b["p50_ms"], 3),
        "c_minus_b_p99_ms": round(c["p99_ms"] - b["p99_ms"], 3),
        "c_over_b_p50": round(c["p50_ms"] / b["p50_ms"], 3),
        "c_over_a_p50": round(c["p50_ms"] / a["p50_ms"], 3),
        "c_over_a_p99": round(c["p99_ms"] / a["p99_ms"], 3),
        "c_over_a_throughput": round(c["throughput_rps"] / a["throughput_rps"], 3),
        "c_over_b_throughput": round(c["throughput_rps"] / b["throughput_rps"], 3),
        "before_minus_b_p50_ms": round(rows["gateway_before"]["p50_ms"] - b["p50_ms"], 3),
        "before_minus_b_p99_ms": round(rows["gateway_before"]["p99_ms"] - b["p99_ms"], 3),
    }


# ---- profiling -----------------------------------------------------------------------
def _ingress_pid() -> int | None:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "ServeReplica:distillery:ingress" in line and "grep" not in line:
            return int(line.split()[0])
    return None


def summarise_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per frame from py-spy's collapsed-stack output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count

    def share(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "share": round(v / total, 4)} for f, v in c.most_common(top)]

    ours = Counter(
        {
            f: v
            for f, v in incl.items()
            if any(p in f for p in ("gateway/", "router/", "feedback/", "fastapi/"))
        }
    )
    return {"samples": total, "self": share(own), "inclusive": share(incl), "inclusive_ours": share(ours)}


def _profile(url: str, prompts: list[str], concurrency: int, n: int, workdir: Path) -> dict[str, Any] | None:
    pid = _ingress_pid()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if pid is None or not Path(pyspy).exists():
        print("profile skipped: no ingress replica pid or no py-spy", flush=True)
        return None
    raw = workdir / "ingress.raw.txt"
    load = threading.Thread(target=_load, args=(url, prompts, concurrency, n, 50, workdir))
    load.start()
    time.sleep(3)
    proc = subprocess.run(
        [
            pyspy,
            "record",
            "-p",
            str(pid),
            "-d",
            "15",
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--gil",
        ],
        capture_output=True,
        text=True,
    )
    load.join()
    if not raw.is_file():
        print(f"profile failed: {proc.stderr[-500:]}", flush=True)
        return None
    shutil.copy(raw, RESULTS / "overhead_ingress_profile.txt")
    return summarise_profile(raw)


# ---- the run ---------------------------------------------------------------------------
def _start_stack(var: Path, models: Path) -> tuple[Any, Any, BackgroundConsumer]:
    from distillery.settings import load_settings
    from feedback import FeedbackConsumer, SQLiteStore, TansuBroker
    from gateway.app import build_app, start_ray
    from tests.conftest import free_port

    var.mkdir(parents=True, exist_ok=True)
    broker = TansuBroker(log_path=var / "tansu.log").start()
    settings = load_settings(
        models_dir=str(models),
        var_dir=str(var),
        server={"port": free_port()},
        feedback={"kafka": {"bootstrap": broker.bootstrap}},
    )
    store = SQLiteStore(var / "feedback.db")
    consumer = BackgroundConsumer(FeedbackConsumer(settings.feedback.kafka, broker.bootstrap, store))
    # Ray workers must import bench (the bare app's ingress class lives here).
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    start_ray(settings)
    from ray import serve

    serve.run(build_app(settings), name="distillery", route_prefix="/gw")
    # The hot-path change, side by side: the same gateway with the ingress on Serve's
    # default threads (user code in its own thread, the handle router in another loop).
    before = settings.model_copy(
        update={"server": settings.server.model_copy(update={"ingress_same_loop": False})}
    )
    serve.run(build_app(before), name="gw_before", route_prefix="/gwb")
    serve.run(build_bare_app(settings), name="bare", route_prefix="/bare")
    return settings, broker, consumer


def run(argv: list[str] | None = None) -> dict[str, Any]:
    quick = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(prog="python -m bench.overhead")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--requests", type=int, default=200 if quick else 600)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy run")
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models")
    parser.add_argument("--out", default=NAME, help="result file name under bench/results")
    parser.add_argument(
        "--throughput-optimized",
        action="store_true",
        help="set RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for the whole Ray session (result: overhead_tput)",
    )
    args = parser.parse_args([] if argv is None else argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    if args.throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # read by Ray's constants at import
        if args.out == NAME:
            args.out = f"{NAME}_tput"
    workdir = Path(tempfile.mkdtemp(prefix="dbo-"))
    student_dir = args.models_dir / "student"
    prompts, prompt_info = _confident_prompts(student_dir, 400, seed=11)
    print(f"prompts: {prompt_info}", flush=True)
    raw: dict[int, dict[str, list[dict[str, Any]]]] = {c: {t: [] for t in TARGETS} for c in levels}
    for c in levels:
        for _ in range(args.rounds):
            r = _run_inproc(student_dir, prompts, c, args.requests, args.warmup)
            print(f"c={c} inproc: p50 {percentile(r['latencies_s'], 0.5) * 1000:.2f} ms", flush=True)
            raw[c]["inproc"].append(r)
    settings, broker, consumer = _start_stack(workdir / "v", args.models_dir)
    base = f"http://127.0.0.1:{settings.server.port}"
    urls = {
        "bare": f"{base}/bare/v1/completions",
        "gateway_before": f"{base}/gwb/v1/completions",
        "gateway": f"{base}/gw/v1/completions",
    }
    profile = None
    try:
        for c in levels:
            for rnd in range(args.rounds):
                # Interleaved, back to back, the order rotated each round.
                order = [SERVED[(i + rnd) % len(SERVED)] for i in range(len(SERVED))]
                for target in order:
                    cpu0 = _cpu_by_component()
                    r = _load(urls[target], prompts, c, args.requests, args.warmup, workdir)
                    cpu1 = _cpu_by_component()
                    total = args.requests + args.warmup
                    r["cpu_ms_per_request"] = {
                        k: round((cpu1[k] - cpu0.get(k, 0.0)) / total * 1000, 3)
                        for k in cpu1
                        if cpu1[k] - cpu0.get(k, 0.0) > 0
                    }
                    r["cpu_ms_per_request"]["load generator"] = round(r["cpu_s"] / total * 1000, 3)
                    print(f"   cpu ms/request: {r['cpu_ms_per_request']}", flush=True)
                    print(
                        f"c={c} {target}: p50 {percentile(r['latencies_s'], 0.5) * 1000:.2f} ms", flush=True
                    )
                    raw[c][target].append(r)
        if args.profile:
            profile = _profile(urls["gateway"], prompts, max(levels), 1200, workdir)
    finally:
        from ray import serve

        serve.shutdown()
        import ray

        ray.shutdown()
        consumer.close()
        broker.stop()
    by_level = []
    for c in levels:
        rows = {t: _merge(raw[c][t]) for t in TARGETS}
        by_level.append({"concurrency": c, "targets": rows, "ratios": _ratios(rows)})
        print(f"c={c}: " + ", ".join(f"{t} p50 {rows[t]['p50_ms']} ms" for t in TARGETS), flush=True)
        print(f"c={c}: {by_level[-1]['ratios']}", flush=True)
    result = {
        "benchmark": NAME,
        "config": {
            "requests_per_round": args.requests,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "max_tokens": MAX_TOKENS,
            "prompts": prompt_info,
            "student_threads": settings.student.num_threads,
            "batch": {
                "max_batch_size": settings.student.max_batch_size,
                "wait_s": settings.student.batch_wait_timeout_s,
            },
            "ray_serve_throughput_optimized": os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0"),
        },
        "levels": by_level,
        "profile": profile,
    }
    print(f"wrote {write_result(args.out, result)}")
    return result


# ---- the report section ------------------------------------------------------------------
def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = data["levels"]
    fig, axes = plt.subplots(1, len(levels), figsize=(5.5 * len(levels), 4), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        for t in TARGETS:
            lat = sorted(level["targets"][t]["latencies_ms"])
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            ax.plot(lat, ys, label=LABELS[t])
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"concurrency {level['concurrency']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Latency distribution (CDF): student in-process vs Serve vs full gateway")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _apart(a: str, b: str) -> str:
    """Flags two runs far apart in time: on this shared machine they are not side by side."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    hours = abs((datetime.strptime(a, fmt) - datetime.strptime(b, fmt)).total_seconds()) / 3600
    return f"; **{hours:.0f} h apart, not side by side: rerun the variant**" if hours > 2 else ""


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    m, cfg = data["machine"], data["config"]
    img = img_dir / "overhead_latency.png"
    _plot(data, img)
    lines = [
        "## Cascade overhead",
        "",
        f"Machine: {m['cpus']} cores, {m['cpu']}; {m['when']}. Load from a separate process (aiohttp,",
        f"closed loop at fixed concurrency), {cfg['rounds']} rounds x {cfg['requests_per_round']} requests",
        f"per target after {cfg['warmup']} warm-up, (b) and (c) interleaved in one Ray session; prompts:",
        "`upper`/`reverse`",
        f"the student keeps ({cfg['prompts']['kept']} of {cfg['prompts']['candidates']} sampled), max_tokens",
        f"{cfg['max_tokens']}; student: 1 torch thread, batches of <= {cfg['batch']['max_batch_size']}, "
        f"{cfg['batch']['wait_s'] * 1000:g} ms wait.",
        "",
        "| concurrency | target | p50 | p90 | p99 | throughput | p50 per round | answered by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in data["levels"]:
        for t in TARGETS:
            r = level["targets"][t]
            tiers = ", ".join(f"{k or '-'}: {v}" for k, v in r["tiers"].items())
            per_round = " / ".join(f"{x['p50_ms']:.0f}" for x in r["rounds"])
            lines.append(
                f"| {level['concurrency']} | {LABELS[t]} | {r['p50_ms']:.2f} ms | {r['p90_ms']:.2f} ms "
                f"| {r['p99_ms']:.2f} ms | {r['throughput_rps']:.0f} req/s | {per_round} ms | {tiers} |"
            )
    lines += [
        "",
        "| concurrency | (c)-(b) p50 | (c)-(b) p99 | (c)/(b) p50 | (c)/(a) p50 | (c)/(a) p99 "
        "| (c)/(a) throughput | (c)/(b) throughput |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in data["levels"]:
        q = level["ratios"]
        lines.append(
            f"| {level['concurrency']} | {q['c_minus_b_p50_ms']:+.2f} ms | {q['c_minus_b_p99_ms']:+.2f} ms "
            f"| {q['c_over_b_p50']:.2f}x | {q['c_over_a_p50']:.2f}x | {q['c_over_a_p99']:.2f}x "
            f"| {q['c_over_a_throughput']:.2f}x | {q['c_over_b_throughput']:.2f}x |"
        )
    lines += [
        "",
        "Reading these numbers. Everything shares two cores: load generator, Serve proxy, ingress,",
        "student (and idle teacher) replicas. At concurrency 1, (c)-(b) is the gateway's own cost",
        "(FastAPI routes and validation, admission middleware, the cascade decision, metrics,",
        "feedback sampling) plus the extra CPU it takes from the shared cores. At concurrency 16 the",
        "Serve path saturates the CPU (the proxy and the ingress each burn several ms of CPU per",
        "request, see the CPU table), the student's batches stay small, and throughput falls to a",
        "tenth of the in-process batcher's or less; p50 then swings by ~100 ms from round to round (the",
        "per-round column), so (c)-(b) at 16 is within that noise and says more about Serve on two",
        "cores than about the cascade. (b) has no FastAPI (a plain `__call__` deployment).",
        "",
        "The hot-path change, side by side in the same session: the same gateway app twice, the",
        "ingress either on Serve's default threads (user code in its own thread, the handle router",
        "in a third event loop: every request crosses threads four times) or, now the default",
        "(`server.ingress_same_loop`), on the replica's main loop (Serve's",
        "`RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0` and `RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0`,",
        "set for the ingress deployment only):",
        "",
        "| concurrency | before p50 | after p50 | before p99 | after p99 | before throughput "
        "| after throughput | before - (b) p50 | after - (b) p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in data["levels"]:
        bf, af, q = level["targets"]["gateway_before"], level["targets"]["gateway"], level["ratios"]
        lines.append(
            f"| {level['concurrency']} | {bf['p50_ms']:.2f} ms | {af['p50_ms']:.2f} ms "
            f"| {bf['p99_ms']:.2f} ms | {af['p99_ms']:.2f} ms "
            f"| {bf['throughput_rps']:.0f} req/s | {af['throughput_rps']:.0f} req/s "
            f"| {q['before_minus_b_p50_ms']:+.2f} ms | {q['c_minus_b_p50_ms']:+.2f} ms |"
        )
    lines += [
        "",
        "CPU per request by process (ms of CPU time per request, warm-up included; from /proc while",
        "each target ran alone; components idle during a run are left out):",
        "",
        "| concurrency | target | Serve proxy | ingress | student | load generator | everything else |",
        "|---|---|---|---|---|---|---|",
    ]
    prefix = {"bare": "bare", "gateway_before": "gateway_before", "gateway": "gateway"}
    for level in data["levels"]:
        for t in SERVED:
            cpu = dict(level["targets"][t].get("cpu_ms_per_request", {}))
            if not cpu:
                continue
            proxy = cpu.pop("Serve proxy", 0.0)
            ingress = cpu.pop(f"{prefix[t]} ingress", 0.0)
            student = cpu.pop(f"{prefix[t]} student", 0.0)
            load = cpu.pop("load generator", 0.0)
            rest = sum(cpu.values())
            lines.append(
                f"| {level['concurrency']} | {LABELS[t]} | {proxy:.2f} | {ingress:.2f} | {student:.2f} "
                f"| {load:.2f} | {rest:.2f} |"
            )
    prof = data.get("profile")
    if prof:
        lines += [
            "",
            f"py-spy (`--gil`, {prof['samples']} samples of the gateway ingress under load at concurrency",
            f"{max(lv['concurrency'] for lv in data['levels'])}); the frames of Distillery and FastAPI with",
            "the largest inclusive share (raw collapsed stacks:",
            "`bench/results/overhead_ingress_profile.txt`):",
            "",
            "| inclusive share | frame |",
            "|---|---|",
        ]
        for row in prof["inclusive_ours"][:12]:
            lines.append(f"| {row['share']:.1%} | `{row['frame']}` |")
        if prof.get("note"):
            lines += ["", f"Profile source: {prof['note']}."]
    lines += ["", f"![latency distributions]({img.relative_to(img_dir.parent)})", ""]
    tput = RESULTS / f"{NAME}_tput.json"
    if tput.is_file():
        opt = json.loads(tput.read_text())
        lines += [
            "### Variant: `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`",
            "",
            "Same bench, a separate Ray session with Serve's throughput-optimized mode",
            f"({opt['machine']['when']}; {opt['config']['rounds']} rounds x "
            f"{opt['config']['requests_per_round']} requests; `python -m bench.overhead "
            f"--throughput-optimized --rounds 1 --requests 300`). Default-mode numbers from the table "
            f"above ({data['machine']['when']}{_apart(data['machine']['when'], opt['machine']['when'])}):",
            "",
            "| concurrency | target | p50 default | p50 optimized | p99 default | p99 optimized "
            "| throughput default | throughput optimized |",
            "|---|---|---|---|---|---|---|---|",
        ]
        default = {lv["concurrency"]: lv["targets"] for lv in data["levels"]}
        for level in opt["levels"]:
            for t in ("bare", "gateway"):  # the mode already runs every replica on one loop
                d, o = default.get(level["concurrency"], {}).get(t), level["targets"][t]
                if d is None:
                    continue
                lines.append(
                    f"| {level['concurrency']} | {LABELS[t]} | {d['p50_ms']:.2f} ms | {o['p50_ms']:.2f} ms "
                    f"| {d['p99_ms']:.2f} ms | {o['p99_ms']:.2f} ms | {d['throughput_rps']:.0f} req/s "
                    f"| {o['throughput_rps']:.0f} req/s |"
                )
        gaps = ", ".join(
            f"concurrency {lv['concurrency']}: p50 {lv['ratios']['c_minus_b_p50_ms']:+.2f} ms, "
            f"p99 {lv['ratios']['c_minus_b_p99_ms']:+.2f} ms"
            for lv in opt["levels"]
        )
        lines += [
            "",
            f"(c)-(b) with the mode on: {gaps}.",
            "",
            "Requests still entered through the Serve proxy's port, whose CPU per request stayed the",
            "same. One round only, so read the differences against the round-to-round spread above;",
            "the mode is not enabled by default (it changes logging, gRPC and ingress behaviour for the",
            "whole cluster, and the test suite has not run under it).",
            "",
        ]
    return lines


if __name__ == "__main__":
    run(sys.argv[1:])
