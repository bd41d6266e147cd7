"""Shared bench helpers: machine info, percentiles, result files."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """vLLM's own OpenAI server on a model directory (what a user would run instead), with
    the engine settings Distillery's vLLM backend uses (``router.config.VLLMEngineConfig``
    defaults: float32, eager, 1 GiB KV cache, 128 sequences), so the two differ only in
    what sits in front of the engine."""

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
        self._log = log_path.open("w")
        args = ["--model", str(model_dir), "--served-model-name", served_name, "--port", str(self.port)]
        args += ["--host", "127.0.0.1", "--dtype", cfg.dtype, "--max-num-seqs", str(cfg.max_num_seqs)]
        args += ["--max-logprobs", str(max_logprobs)]
        args += ["--max-model-len", str(max_model_len)] if max_model_len else []
        args += ["--enforce-eager"] if cfg.enforce_eager else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM's server exited with {self.proc.returncode}; see its log")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise TimeoutError("vLLM's server did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class BackgroundConsumer:
    """A ``FeedbackConsumer`` looping on a daemon thread of the bench process.

    ``close`` stops the loop, waits for it, then closes the Kafka client: a client left
    open keeps retrying its broker (gone after the benchmark) for the rest of ``make bench``.
    """

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._thread = threading.Thread(target=consumer.run, name="feedback-consumer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._consumer.stop()
        self._thread.join(10)
        self._consumer.close()


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
