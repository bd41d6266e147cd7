"""Shared bench helpers: machine info, percentiles, result files."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def free_port(avoid: Collection[int] = ()) -> int:
    """A port nothing listens on now, none of ``avoid`` (ports handed out for a process that
    has not bound them yet: the OS may offer the same one again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def free_port_pair(avoid: Collection[int] = ()) -> int:
    """A port P with P and P + 1 both free (``distillery run --metrics-port P`` serves the
    consumer's metrics on P and the loop's on P + 1)."""
    for _ in range(50):
        port = free_port(avoid)
        if port + 1 in avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


class ServedProcess:
    """A server process tree for a benchmark: started in its own session, waited for until
    ``ready()`` answers, stopped with SIGTERM (then SIGKILL to the whole group)."""

    start_timeout_s = 420.0
    stop_timeout_s = 90.0

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool]) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
        self._ready = ready

    def wait(self, timeout_s: float | None = None) -> None:
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}; see {self._log.name}")
            try:
                if self._ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"not up after {timeout_s:.0f} s; see {self._log.name}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


class VLLMServer(ServedProcess):
    """vLLM's own OpenAI server on a model directory (what a user would run instead), with
    the engine settings Distillery's vLLM backend uses (``router.config.VLLMEngineConfig``
    defaults: float32, eager, 1 GiB KV cache, 128 sequences), so the two differ only in
    what sits in front of the engine."""

    start_timeout_s = 300.0
    stop_timeout_s = 30.0

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        *,
        served_name: str,
        max_logprobs: int = 1,
        max_model_len: int | None = None,
    ) -> None:
        from router.config import VLLMEngineConfig

        cfg = VLLMEngineConfig()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": f"{cfg.kv_cache_gib or 1:g}",
            "VLLM_CACHE_ROOT": str(REPO / "var" / "vllm"),
            "VLLM_NO_USAGE_STATS": "1",
        }
        args = ["--model", str(model_dir), "--served-model-name", served_name, "--port", str(self.port)]
        args += ["--host", "127.0.0.1", "--dtype", cfg.dtype, "--max-num-seqs", str(cfg.max_num_seqs)]
        args += ["--max-logprobs", str(max_logprobs)]
        args += ["--max-model-len", str(max_model_len)] if max_model_len else []
        args += ["--enforce-eager"] if cfg.enforce_eager else []
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args]
        super().__init__(argv, env, log_path, self._answers)

    def _answers(self) -> bool:
        return httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200


def gateway_env(var: Path, models_dir: Path, *, before: bool, placement: str) -> dict[str, str]:
    """``distillery run``'s environment for a benchmark: its own var and models, vLLM for
    the student, ``before``: the previous default (no fast path), HAProxy's ports free."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "RAY_"))}
    env.update(
        {
            "DISTILLERY_VAR_DIR": str(var),
            "DISTILLERY_MODELS_DIR": str(models_dir),
            "DISTILLERY_STUDENT__KIND": "vllm",
            "DISTILLERY_STUDENT_PLACEMENT": placement,
            "DISTILLERY_SERVER__FAST_PATH": "0" if before else "1",
            "DISTILLERY_SERVER__HAPROXY_METRICS_PORT": str(free_port()),
            "DISTILLERY_SERVER__HAPROXY_STATS_PORT": str(free_port()),
        }
    )
    return env


def two_free_ports() -> int:
    """A free port whose successor is free too (``distillery run`` binds both)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def distillery_run(env: dict[str, str], preset: str, log: Path) -> tuple[ServedProcess, str]:
    """``distillery --preset PRESET run`` on a free port with ``env`` (``gateway_env``'s,
    plus whatever a benchmark sets); ready when ``/healthz`` answers. Returns it and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "distillery.cli", "--preset", preset, "run", "--port", str(port)]
    argv += ["--metrics-port", str(two_free_ports())]  # the consumer's, and the loop's next to it

    def ready() -> bool:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200

    return ServedProcess(argv, env, log, ready), url


def run_load(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """One ``bench._load`` run in its own process (``spec``: its SPEC_JSON), its OUT_JSON."""
    spec_file = work / f"spec-{time.time_ns()}.json"
    out_file = spec_file.with_suffix(".out.json")
    spec_file.write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "bench._load", str(spec_file), str(out_file)], check=True, cwd=REPO)
    raw: dict[str, Any] = json.loads(out_file.read_text())
    return raw


def machine_info() -> dict[str, Any]:
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def demo_stack(var: Path, models: Path, **settings: Any) -> Any:
    """The ``distillery run`` stack (broker, consumer, Serve) without its loop, on ``models``
    (benchmarks tick their own loop, or none); ``settings`` override sections."""
    from distillery._stack import LocalStack
    from distillery.settings import load_settings

    var.mkdir(parents=True, exist_ok=True)
    loaded = load_settings(
        models_dir=str(models),
        var_dir=str(var),
        server={"port": free_port()},
        cascade={"teacher_timeout_s": 30},
        **settings,
    )
    return LocalStack(loaded)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2))
    return path


class MicroBatcher:
    """The Serve batcher's policy without Serve (what ``@serve.batch`` does for the
    transformers student): up to ``max_batch`` requests, or whatever arrived ``wait_s``
    after the first one, go to ``backend.generate`` as one batch."""

    def __init__(self, backend: Any, max_batch: int, wait_s: float) -> None:
        self._backend = backend
        self._max = max_batch
        self._wait = wait_s
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def generate(self, request: Any) -> Any:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, fut))
        return await fut

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = time.perf_counter() + self._wait
            while len(batch) < self._max:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            try:
                gens = await self._backend.generate([r for r, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), gen in zip(batch, gens, strict=True):
                fut.set_result(gen)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
