"""Can a user count on the refresh loop? The real-pair drift scenario, repeated over seeds
through the shipped stack (issue 25).

Per seed, fresh state: ``distillery --preset smollm2 run`` as a subprocess (its own var
dir, the shared models dir, ``retrain.seed`` = the seed, no nightly refresh), then the
scenario's traffic: a window of the old routes, a window of the drifted routes, then the
scenario's mix at 4 clients with a one-at-a-time latency probe on the old routes. The
stack's own loop detects drift and refreshes (the benchmark only sends traffic and reads
``<registry>/loop_events.jsonl`` and ``/healthz``); then fresh windows of the drifted and
the old routes. Measured: the first refresh's outcome and reasons, its stages, the cycle
(refresh tick -> ``/healthz`` names the new student), escalation and served agreement per
route group and per route before/after, probe p50/p99 with no refresh running vs during
it, an escalation timeline.

    python -m bench --only loop_robustness            # 5 seeds, ~25 min each on 2 cores
    python -m bench.loop_robustness --seeds 3,4       # some seeds
    python -m bench.loop_robustness --preset demo --runs 1 --window 40 \\
        --set loop.check_interval_s=60                # smoke test on the toy models (~10 min)

Results: ``bench/results/loop_robustness.json`` (rewritten after each run; top-level
``summary``), plot ``docs/img/loop_robustness.png``, report section in docs/benchmarks.md;
each run's stack log, events and raw responses under ``var/bench/lr/seed-N/``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench._common import REPO, ServedProcess, free_port, free_port_pair, percentile, write_result

NAME = "loop_robustness"
VAR = REPO / "var" / "bench" / "lr"  # short: Ray's socket paths under <var>/ray must stay < 108 bytes
OUTCOMES = ("promoted", "refused", "rolled_back")
STAGES = ("drift_check", "dataset", "train", "gate", "register", "canary")
TARGETS = {
    "runs_min": 5,
    "promoted_first_refresh_share_min": 0.8,
    "drifted_escalation_ratio_max": 0.5,
    "old_escalation_delta_max": 0.05,
    "cycle_s_max": 900.0,
    "serving_p99_ratio_max": 2.0,
}


@dataclass(frozen=True)
class Options:
    """One invocation's knobs (``python -m bench.loop_robustness --help``)."""

    preset: str
    seeds: tuple[int, ...]
    window: int
    refresh_timeout_s: float
    attempts: int
    student_kind: str
    concurrency: int
    probe_interval_s: float
    bucket_s: float
    tail_s: float
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Answer:
    """One background or probe request: when it started, what it was, what came back."""

    t: float
    source: str
    route: str
    latency_s: float
    status: int
    escalated: bool | None = None
    version: str | None = None


# ---- the stack ---------------------------------------------------------------------------
class Stack(ServedProcess):
    """``distillery run`` in its own session; stopped as a user stops it (Ctrl-C), then
    harder, and whatever it started that outlives it is killed by pid (and reported)."""

    start_timeout_s = 3600.0  # the first run may build or import the preset's models
    stop_timeout_s = 240.0

    def __init__(self, opts: Options, seed: int, var: Path, config: Path) -> None:
        self.port = free_port()
        self.metrics_port = free_port_pair()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("distillery")
        argv = [str(exe)] if exe.is_file() else [sys.executable, "-m", "distillery.cli"]
        argv += ["--preset", opts.preset, "--config", str(config), "run"]
        argv += ["--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        env = {
            **os.environ,
            "DISTILLERY_VAR_DIR": str(var),
            "DISTILLERY_MODELS_DIR": str(models_dir(opts)),
            "DISTILLERY_RETRAIN__SEED": str(seed),
            # The product's default engine, whatever ``python -m bench`` set for the others.
            "DISTILLERY_STUDENT__KIND": opts.student_kind,
        }
        super().__init__(argv, env, var / "stack.log", self.health_ok)

    def health(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.url}/healthz", timeout=10)
            body: dict[str, Any] = r.json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if r.status_code == 200 else None

    def health_ok(self) -> bool:
        return bool((self.health() or {}).get("student"))

    def shutdown(self) -> dict[str, Any]:
        import psutil

        t0 = time.monotonic()
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        how = "SIGINT"
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            how = "SIGTERM"
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                how = "SIGKILL"
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        left = []
        for p in tree:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(" ".join(p.cmdline())[:200] or p.name())
                    p.kill()
            except psutil.Error:
                pass
        self._log.close()
        return {
            "stopped_by": how,
            "stop_s": round(time.monotonic() - t0, 1),
            "returncode": self.proc.returncode,
            "leftover_processes": left,
        }


def models_dir(opts: Options) -> Path:
    """The preset's models dir (shared by every run, built once), absolute."""
    from distillery.settings import load_settings

    path = load_settings(preset=opts.preset, **opts.overrides).resolved_models_dir
    return path if path.is_absolute() else REPO / path


# ---- traffic -----------------------------------------------------------------------------
class Traffic:
    """Background load on threads: the scenario's drift mix at ``concurrency`` clients and a
    one-at-a-time probe on the old routes every ``probe_interval_s``; every answer kept."""

    def __init__(self, url: str, workload: Any, model: str, seed: int, opts: Options) -> None:
        self._url, self._wl, self._model, self._seed, self._opts = url, workload, model, seed, opts
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, what: str) -> None:
        target = self._probe if what == "probe" else lambda: asyncio.run(self._mix())
        thread = threading.Thread(target=target, name=f"bench-{what}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(300)

    def _keep(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def _probe(self) -> None:
        rng = random.Random(self._seed * 1000 + 1)
        routes = itertools.cycle(self._wl.old_routes)
        with httpx.Client(timeout=180) as client:
            while not self._stop.is_set():
                item = self._wl.sample([next(routes)], 1, rng)[0]
                answer = self._answer("probe", item, lambda p, b: client.post(f"{self._url}{p}", json=b))
                self._stop.wait(max(0.0, self._opts.probe_interval_s - answer.latency_s))

    async def _mix(self) -> None:
        wl = self._wl
        mix = [r for old in wl.old_routes for r in (*wl.new_routes, old)]  # the scenario's mix
        routes = itertools.cycle(mix)
        async with httpx.AsyncClient(timeout=180) as client:

            async def worker(k: int) -> None:
                rng = random.Random(self._seed * 1000 + 10 + k)
                while not self._stop.is_set():
                    item = wl.sample([next(routes)], 1, rng)[0]
                    path, body = item.http(self._model, wl.max_tokens)
                    t0 = time.time()
                    try:
                        r = await client.post(f"{self._url}{path}", json=body)
                    except httpx.HTTPError:
                        self._keep(Answer(t0, "mix", item.route, time.time() - t0, 0))
                        await asyncio.sleep(0.5)
                        continue
                    self._keep(_answer_from(t0, "mix", item.route, r))

            await asyncio.gather(*(worker(k) for k in range(self._opts.concurrency)))

    def _answer(
        self, source: str, item: Any, post: Callable[[str, dict[str, Any]], httpx.Response]
    ) -> Answer:
        path, body = item.http(self._model, self._wl.max_tokens)
        t0 = time.time()
        try:
            answer = _answer_from(t0, source, item.route, post(path, body))
        except httpx.HTTPError:
            answer = Answer(t0, source, item.route, time.time() - t0, 0)
        self._keep(answer)
        return answer


def _answer_from(t0: float, source: str, route: str, r: httpx.Response) -> Answer:
    from distillery._workloads import answer_of

    answer = Answer(t0, source, route, time.time() - t0, r.status_code)
    if r.status_code == 200:
        _, info = answer_of(r.json())
        answer.escalated = bool(info.get("escalated"))
        answer.version = info.get("model_version")
    return answer


# ---- following the stack's loop ----------------------------------------------------------
class Follower:
    """What the running stack shows of its loop: each new line of its events file (with the
    time it was first seen), each change of ``/healthz``'s student and canary, and ticks that
    raised (they write no event; the loop's ``distillery_refreshes_total{result="failed"}``)."""

    def __init__(self, stack: Stack, events_file: Path) -> None:
        self._stack = stack
        self._file = events_file
        self._offset = 0
        self._metrics_at = 0.0
        self.events: list[dict[str, Any]] = []
        self.health: list[dict[str, Any]] = []
        self.failed_ticks = 0

    def poll(self) -> None:
        self._read_events()
        h = self._stack.health()
        if h is not None:
            state = {k: h.get(k) for k in ("student", "canary", "canary_share")}
            if not self.health or {k: self.health[-1][k] for k in state} != state:
                self.health.append({"t": time.time(), **state})
        if time.monotonic() - self._metrics_at > 10:
            self._metrics_at = time.monotonic()
            self.failed_ticks = max(self.failed_ticks, self._failed_ticks())

    def _read_events(self) -> None:
        if not self._file.is_file():
            return
        with self._file.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read next time
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            if line.strip():
                self.events.append({**json.loads(line), "seen": time.time()})

    def _failed_ticks(self) -> int:
        try:
            text = httpx.get(f"http://127.0.0.1:{self._stack.metrics_port + 1}/metrics", timeout=5).text
        except httpx.HTTPError:
            return 0
        m = re.search(r'^distillery_refreshes_total\{result="failed"\} ([0-9.e+]+)$', text, re.M)
        return int(float(m.group(1))) if m else 0

    def outcomes(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["result"] in OUTCOMES]

    def swapped_to(self, version: str) -> float | None:
        return next((h["t"] for h in self.health if h["student"] == version), None)


def follow(follower: Follower, stack: Stack, deadline: float, attempts: int) -> None:
    """Until the loop has given ``attempts`` refresh outcomes (or one promotion), the
    promoted version is what ``/healthz`` names, or ``deadline``."""
    while time.time() < deadline:
        if stack.proc.poll() is not None:
            raise RuntimeError(f"the stack exited with {stack.proc.returncode}; see its log")
        follower.poll()
        done = follower.outcomes()
        if done and done[-1]["result"] == "promoted":
            if follower.swapped_to(done[-1]["version"]) is not None:
                return
            if time.time() - done[-1]["seen"] > 300:
                return  # promoted but never served: reported as no swap
        elif len(done) >= attempts:
            return
        time.sleep(1.0)


# ---- one run -----------------------------------------------------------------------------
def _per_route(
    items: Sequence[Any], bodies: list[dict[str, Any]], agree: Callable[[str, str], bool]
) -> dict[str, dict[str, float]]:
    """Per route: requests, escalation rate, and agreement of the served answers with the
    ground truth where the workload has one (what moved, where the window's agreement moved)."""
    from distillery._workloads import answer_of

    counts: dict[str, list[int]] = {}
    for item, body in zip(items, bodies, strict=True):
        text, info = answer_of(body)
        c = counts.setdefault(item.route, [0, 0, 0, 0])
        c[0] += 1
        c[1] += bool(info.get("escalated"))
        if item.truth is not None:
            c[2] += 1
            c[3] += agree(text, item.truth)
    out: dict[str, dict[str, float]] = {}
    for route, (n, escalated, judged, right) in sorted(counts.items()):
        out[route] = {"requests": n, "escalation_rate": round(escalated / n, 4)}
        if judged:
            out[route]["agreement"] = round(right / judged, 4)
    return out


class Windows:
    """Measured windows (``distillery._scenario.send_window``) with per-route escalation."""

    def __init__(self, url: str, settings: Any, seed: int, opts: Options) -> None:
        from distillery._workloads import workload_for
        from router import AgreementMetric

        self.url, self.opts = url, opts
        self.workload = workload_for(settings.workload)
        self.model = settings.server.served_model_name
        self._agree = AgreementMetric(settings.agreement)
        self._pricing = settings.pricing
        self._rng = random.Random(seed)

    def send(self, label: str, routes: Sequence[str]) -> dict[str, Any]:
        from distillery._scenario import send_window

        per_route: dict[str, dict[str, float]] = {}

        def observe(_: str, items: Sequence[Any], bodies: list[dict[str, Any]]) -> None:
            per_route.update(_per_route(items, bodies, self._agree))

        t0 = time.time()
        stats = send_window(
            self.url,
            label,
            self.workload.sample(routes, self.opts.window, self._rng),
            workload=self.workload,
            agreement=self._agree,
            concurrency=self.opts.concurrency,
            pricing=self._pricing,
            observer=observe,
            model=self.model,
        )
        print(
            f"  [{label}] escalation {stats.escalation_rate:.1%}, agreement {stats.agreement:.1%},"
            f" student {stats.student_versions}",
            flush=True,
        )
        return {**asdict(stats), "per_route": per_route, "started": t0, "ended": time.time()}


def warm_up(url: str, wl: Any, model: str, seed: int) -> None:
    """A few untimed requests to both tiers first: the first request after start-up takes
    seconds, which would otherwise be the idle p99 of a short idle period."""
    from distillery._scenario import post_all

    items = wl.sample(wl.old_routes, 8, random.Random(seed + 999))
    for name, picked in ((model, items), (f"{model}-teacher", items[:4])):
        asyncio.run(post_all(url, picked, 4, model=name, max_tokens=wl.max_tokens))


def run_config(var: Path, overrides: dict[str, Any]) -> Path:
    """The run's settings file: no nightly refresh, then ``--set`` overrides."""
    path = var / "bench-settings.yaml"
    path.write_text(yaml.safe_dump(_merge({"loop": {"nightly_at": None}}, overrides)))
    return path


def one_run(seed: int, opts: Options) -> dict[str, Any]:
    """One seed on a fresh stack; a run that fails is recorded with its error."""
    var = VAR / f"seed-{seed}"
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    record: dict[str, Any] = {"seed": seed, "var_dir": str(var.relative_to(REPO))}
    started = time.time()
    stack: Stack | None = None
    traffic: list[Traffic] = []
    try:
        stack = Stack(opts, seed, var, run_config(var, opts.overrides))
        _scenario(stack, seed, opts, var, record, traffic)
    except Exception as exc:  # one failed run must not lose the others: recorded, next seed
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        print(f"  seed {seed} failed: {record['error']}", flush=True)
    finally:
        for t in traffic:
            t.stop()
            _save_answers(var / "answers.jsonl", t.answers)
        if stack is not None:
            record["stop"] = stack.shutdown()
        record["wall_s"] = round(time.time() - started, 1)
        _prune(var)
    return record


def _scenario(
    stack: Stack, seed: int, opts: Options, var: Path, record: dict[str, Any], traffic: list[Traffic]
) -> None:
    """The phases: up, old window, drifted window, the mix until the loop's outcome and the
    swap, then drifted and old windows with the traffic stopped."""
    from distillery.settings import load_settings
    from retrain import EVENTS_FILE

    started = time.time()
    stack.wait()
    record["startup_s"] = round(time.time() - started, 1)
    settings = load_settings(preset=opts.preset, var_dir=str(var), **opts.overrides)
    windows = Windows(stack.url, settings, seed, opts)
    wl = windows.workload
    load = Traffic(stack.url, wl, windows.model, seed, opts)
    traffic.append(load)
    follower = Follower(stack, settings.resolved_registry_dir / EVENTS_FILE)
    warm_up(stack.url, wl, windows.model, seed)
    load.start("probe")  # the same load from here on: ``concurrency`` clients + the probe
    record["windows"] = {"before_old": windows.send("before: old routes", wl.old_routes)}
    record["drift_started"] = t_drift = time.time()
    record["windows"]["before_drifted"] = windows.send("drift: drifted routes", wl.new_routes)
    load.start("mix")
    print(f"  [drift] the scenario's mix at {opts.concurrency} clients; following the loop", flush=True)
    follow(follower, stack, t_drift + opts.refresh_timeout_s, opts.attempts)
    if opts.tail_s and any(e["result"] == "promoted" for e in follower.outcomes()):
        time.sleep(opts.tail_s)  # the timeline shows the new student under the same traffic
    load.stop()
    for key, label, routes in (
        ("after_drifted", "after: drifted routes", wl.new_routes),
        ("after_old", "after: old routes", wl.old_routes),
    ):
        try:  # a failed window must not lose the refresh it follows
            record["windows"][key] = windows.send(label, routes)
        except httpx.HTTPError as exc:
            record.setdefault("window_errors", {})[key] = f"{type(exc).__name__}: {exc}"[:300]
    follower.poll()
    record.update(analyse(follower, load.answers, record, opts, wl))


def _save_answers(path: Path, answers: list[Answer]) -> None:
    with path.open("w") as f:
        for a in answers:
            f.write(json.dumps(asdict(a)) + "\n")


def _prune(var: Path) -> None:
    """Candidate and registry weights go (~0.2 GB each on the real pair); logs stay."""
    for weights in var.rglob("*.safetensors"):
        weights.unlink(missing_ok=True)


# ---- analysis ----------------------------------------------------------------------------
def analyse(
    follower: Follower, answers: list[Answer], record: dict[str, Any], opts: Options, wl: Any
) -> dict[str, Any]:
    t0 = record["drift_started"]
    outcomes = follower.outcomes()
    first = outcomes[0] if outcomes else None
    promoted = next((e for e in outcomes if e["result"] == "promoted"), None)
    swap = follower.swapped_to(promoted["version"]) if promoted else None
    drifted = next((e for e in follower.events if (e.get("drift") or {}).get("drifted")), None)
    out: dict[str, Any] = {
        "events": [{**e, "at_s": _rel(e["at"], t0), "seen_s": _rel(e["seen"], t0)} for e in follower.events],
        "health_changes": [{**h, "t_s": round(h["t"] - t0, 1)} for h in follower.health],
        "failed_ticks": follower.failed_ticks,
        "first_refresh": _refresh_row(first, t0) if first else None,
        "outcome": promoted["result"] if promoted else (outcomes[-1]["result"] if outcomes else "none"),
        "drift_detected_s": round(drifted["at"] - t0, 1) if drifted else None,
        "swap_s": round(swap - t0, 1) if swap else None,
        # Drift detected (the refreshing tick started) -> /healthz names the new student.
        "cycle_s": round(swap - first["at"], 1) if swap and first else None,
        "promoted_refresh_cycle_s": round(swap - promoted["at"], 1) if swap and promoted else None,
    }
    end = swap or (outcomes[-1]["seen"] if outcomes else time.time())
    out["groups"] = _groups(record["windows"])
    out["latency"] = _latency(answers, first, end, swap)
    out["background"] = _background(answers, first["at"] if first else None, end)
    out["timeline"] = _timeline(answers, t0, opts.bucket_s, wl)
    return out


def _rel(t: float, t0: float) -> float:
    return round(t - t0, 1)


def _refresh_row(event: dict[str, Any], t0: float) -> dict[str, Any]:
    marks, at = [], event["at"] - t0
    for stage in (s for s in STAGES if s in event["timings_s"]):
        end = at + event["timings_s"][stage]
        marks.append({"stage": stage, "start_s": round(at, 1), "end_s": round(end, 1)})
        at = end
    return {
        "result": event["result"],
        "version": event.get("version"),
        "reasons": [r for r in event.get("detail", "").split("; ") if r],
        "timings_s": event["timings_s"],
        "at_s": round(event["at"] - t0, 1),
        "stage_marks": marks,
    }


def _groups(windows: dict[str, Any]) -> dict[str, Any]:
    def rate(name: str, key: str) -> float | None:
        v = windows[name][key] if name in windows else None
        return None if v is None else round(v, 4)

    drifted = {
        "escalation_before": rate("before_drifted", "escalation_rate_new_skills"),
        "escalation_after": rate("after_drifted", "escalation_rate_new_skills"),
        "agreement_before": rate("before_drifted", "accuracy_new_skills"),
        "agreement_after": rate("after_drifted", "accuracy_new_skills"),
    }
    old = {
        "escalation_before": rate("before_old", "escalation_rate_old_skills"),
        "escalation_after": rate("after_old", "escalation_rate_old_skills"),
        "agreement_before": rate("before_old", "accuracy_old_skills"),
        "agreement_after": rate("after_old", "accuracy_old_skills"),
    }
    for g in (drifted, old):
        b, a = g["escalation_before"], g["escalation_after"]
        g["escalation_delta"] = None if a is None or b is None else round(a - b, 4)
        g["escalation_ratio"] = None if a is None or not b else round(a / b, 4)
    return {"drifted": drifted, "old": old}


def _stats(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.5), 1) if ms else None,
        "p95_ms": round(percentile(ms, 0.95), 1) if ms else None,
        "p99_ms": round(percentile(ms, 0.99), 1) if ms else None,
    }


def _latency(
    answers: list[Answer], refresh: dict[str, Any] | None, end: float, swap: float | None
) -> dict[str, Any]:
    """The probe's latency with no refresh running (before the refreshing tick) vs during the
    refresh (tick start -> swap or outcome) and during its training stage alone; also on the
    answers the student kept (an escalated probe waits for the teacher), and after the swap.
    Below 100 answers a p99 is the slowest one: read ``n`` beside it."""
    probe = [a for a in answers if a.source == "probe" and a.status == 200]
    start = refresh["at"] if refresh else end

    def between(lo: float, hi: float, student_only: bool = False) -> dict[str, Any]:
        picked = [a for a in probe if lo <= a.t < hi and not (student_only and a.escalated)]
        return _stats([a.latency_s for a in picked])

    out: dict[str, Any] = {
        "idle": between(0.0, start),
        "refresh": between(start, end),
        "idle_student_only": between(0.0, start, True),
        "refresh_student_only": between(start, end, True),
    }
    if swap is not None:
        out["after_swap"] = between(swap, float("inf"))
    if refresh and "train" in refresh["timings_s"]:
        t = refresh["timings_s"]
        train0 = refresh["at"] + t.get("drift_check", 0.0) + t.get("dataset", 0.0)
        out["train"] = between(train0, train0 + t["train"])
    idle, during = out["idle"]["p99_ms"], out["refresh"]["p99_ms"]
    out["p99_ratio"] = round(during / idle, 3) if idle and during else None
    return out


def _background(answers: list[Answer], refresh_at: float | None, end: float) -> dict[str, Any]:
    mix = [a for a in answers if a.source == "mix"]
    during = [a for a in answers if refresh_at is not None and refresh_at <= a.t < end]
    return {
        "requests": len(mix),
        "errors": sum(a.status != 200 for a in mix),
        "requests_during_refresh": len(during),
        "errors_during_refresh": sum(a.status != 200 for a in during),
    }


def _timeline(answers: list[Answer], t0: float, bucket_s: float, wl: Any) -> list[dict[str, Any]]:
    """Escalation per ``bucket_s`` on the drifted and the old routes (the mix and the probe);
    ``t_s``: the bucket's start, ``mean_t_s``: its answers' mean start (a last bucket is short)."""
    buckets: dict[int, list[Answer]] = {}
    for a in answers:
        if a.escalated is not None:
            buckets.setdefault(int((a.t - t0) // bucket_s), []).append(a)
    rows = []
    for k, picked in sorted(buckets.items()):
        row: dict[str, Any] = {
            "t_s": k * bucket_s,
            "mean_t_s": _rel(statistics.fmean(a.t for a in picked), t0),
        }
        for group in ("drifted", "old"):
            esc = [bool(a.escalated) for a in picked if (a.route in wl.new_routes) == (group == "drifted")]
            rate = round(sum(esc) / len(esc), 4) if esc else None
            row[group] = {"requests": len(esc), "escalation_rate": rate}
        rows.append(row)
    return rows


# ---- summary -----------------------------------------------------------------------------
def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "groups" in r]
    promoted = [r for r in ok if r["outcome"] == "promoted"]
    first_promoted = sum((r.get("first_refresh") or {}).get("result") == "promoted" for r in ok)
    cycles = [r["cycle_s"] for r in ok if r["cycle_s"] is not None]
    drifted_after = [r["groups"]["drifted"]["escalation_after"] for r in ok]
    old_delta = [r["groups"]["old"]["escalation_delta"] for r in ok]
    ratios = [r["latency"]["p99_ratio"] for r in ok if r["latency"]["p99_ratio"] is not None]
    tg = TARGETS
    summary: dict[str, Any] = {
        "runs": len(runs),
        "runs_completed": len(ok),
        "promoted_first_refresh": first_promoted,
        "promoted_any_refresh": len(promoted),
        "median_cycle_s": round(statistics.median(cycles), 1) if cycles else None,
        "max_cycle_s": max(cycles) if cycles else None,
        "median_drifted_escalation_after": _median([v for v in drifted_after if v is not None]),
        "worst_old_escalation_delta": max((v for v in old_delta if v is not None), default=None),
        # The worst run's p99 during its refresh over its p99 with no refresh running.
        "serving_p99_ratio_during_refresh": max(ratios) if ratios else None,
        "targets": tg,
    }
    ratios_all = bool(ratios) and len(ratios) == len(ok)
    summary["met"] = {
        "runs": len(runs) >= tg["runs_min"],
        "promoted_first_refresh": first_promoted
        >= tg["promoted_first_refresh_share_min"] * max(len(runs), tg["runs_min"]),
        "drifted_escalation_halves_every_promoted_run": bool(promoted) and all(map(_halved, promoted)),
        "old_escalation_every_promoted_run": bool(promoted) and all(map(_old_held, promoted)),
        "cycle_every_run": bool(runs) and len(cycles) == len(runs) and max(cycles) <= tg["cycle_s_max"],
        "serving_p99_ratio": ratios_all and max(ratios) <= tg["serving_p99_ratio_max"],
    }
    return summary


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _halved(run: dict[str, Any]) -> bool:
    ratio = run["groups"]["drifted"]["escalation_ratio"]
    return ratio is not None and ratio <= TARGETS["drifted_escalation_ratio_max"]


def _old_held(run: dict[str, Any]) -> bool:
    delta = run["groups"]["old"]["escalation_delta"]
    return delta is not None and delta <= TARGETS["old_escalation_delta_max"]


# ---- entry point -------------------------------------------------------------------------
def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set loop.check_interval_s=60`` -> ``{"loop": {"check_interval_s": 60}}`` (YAML values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE (dotted key), not {pair!r}")
        node: Any = yaml.safe_load(value)
        for part in reversed(key.split(".")):
            node = {part: node}
        out = _merge(out, node)
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def options(argv: list[str]) -> Options:
    quick = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
    p = argparse.ArgumentParser(prog="python -m bench.loop_robustness")
    p.add_argument("--preset", default="smollm2", help="smollm2 (the issue's pair) or demo (a smoke test)")
    p.add_argument("--runs", type=int, default=2 if quick else 5, help="seeds 1..N")
    p.add_argument("--seeds", default="", help="comma-separated seeds instead of 1..--runs")
    p.add_argument("--window", type=int, default=100 if quick else 200, help="requests per measured window")
    p.add_argument("--refresh-timeout", type=float, default=1800.0, help="seconds from drift start")
    p.add_argument("--attempts", type=int, default=1, help="refresh outcomes to wait for unless promoted")
    p.add_argument("--student-kind", default="auto", help="the student engine (the product default: auto)")
    p.add_argument("--concurrency", type=int, default=4, help="clients of the drift mix and the windows")
    p.add_argument("--probe-interval", type=float, default=1.0, help="seconds between probe requests")
    p.add_argument("--bucket", type=float, default=60.0, help="timeline bucket, seconds")
    p.add_argument("--tail", type=float, default=120.0, help="seconds of traffic kept on after a swap")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every run's stack"
    )
    a = p.parse_args(argv)
    seeds = tuple(int(s) for s in a.seeds.split(",") if s) or tuple(range(1, a.runs + 1))
    return Options(
        a.preset,
        seeds,
        a.window,
        a.refresh_timeout,
        a.attempts,
        a.student_kind,
        a.concurrency,
        a.probe_interval,
        a.bucket,
        a.tail,
        _overrides(a.set),
    )


def run(argv: list[str] | None = None) -> dict[str, Any]:
    opts = options([] if argv is None else argv)
    result: dict[str, Any] = {"options": asdict(opts), "targets": TARGETS, "runs": []}
    for seed in opts.seeds:
        print(f"[loop_robustness] seed {seed} ({opts.preset})", flush=True)
        result["runs"].append(one_run(seed, opts))
        result["summary"] = summarize(result["runs"])
        write_result(NAME, result)  # after each run: a crash keeps the runs before it
        print(f"[loop_robustness] {json.dumps(_brief(result['runs'][-1]))}", flush=True)
    print(f"[summary] {json.dumps(result['summary'])}", flush=True)
    try:
        from bench.report import IMG
        from bench.report.loop_robustness import plot

        print(f"plot: {plot(result, IMG / 'loop_robustness.png')}")
    except ImportError:  # matplotlib missing: the numbers stand without the plot
        pass
    return result


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("seed", "outcome", "cycle_s", "drift_detected_s", "error")
    out = {k: r.get(k) for k in keys if k in r}
    if "groups" in r:
        out["groups"] = r["groups"]
        out["p99_ratio"] = r["latency"]["p99_ratio"]
        out["stages"] = (r.get("first_refresh") or {}).get("timings_s")
    return out


if __name__ == "__main__":
    run(sys.argv[1:])
