"""The load generator: a separate process that keeps a fixed number of requests in flight.

    python -m bench._load SPEC_JSON OUT_JSON

SPEC_JSON holds ``url``, ``prompts`` or ``conversations`` (chat messages; cycled),
``concurrency``, ``requests``, ``warmup``, ``model`` and ``max_tokens``. Each of
``concurrency`` workers sends one request, waits for its answer, sends the next (closed
loop), so throughput and latency are measured at the
same fixed concurrency. aiohttp, one keep-alive connection per worker: the client is
lighter than httpx, which matters when it shares two cores with the server.
OUT_JSON receives per-request latencies (seconds, in completion order), status codes, the
``x-distillery-tier`` header of each answer, the completion tokens of the measured answers
and the wall time of the measured phase.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    prompts: list[str] = spec.get("prompts") or []
    # chat requests (``/v1/chat/completions``) when given: lists of {role, content}
    conversations: list[list[dict[str, str]]] = spec.get("conversations") or []
    tokens = 0
    concurrency = int(spec["concurrency"])
    total = int(spec["warmup"]) + int(spec["requests"])
    warmup = int(spec["warmup"])
    url = spec["url"]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    tiers: dict[str, int] = {}
    counter = iter(range(total))
    started: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal tokens
            for i in counter:
                if i == warmup:
                    started.append(time.perf_counter())
                body: dict[str, Any] = {"model": spec["model"], "max_tokens": spec["max_tokens"]}
                if conversations:
                    body["messages"] = conversations[i % len(conversations)]
                else:
                    body["prompt"] = prompts[i % len(prompts)]
                t0 = time.perf_counter()
                async with session.post(url, json=body) as resp:
                    raw = await resp.read()
                    status = resp.status
                    tier = resp.headers.get("x-distillery-tier", "")
                elapsed = time.perf_counter() - t0
                if i >= warmup:
                    if status == 200:
                        tokens += int(json.loads(raw).get("usage", {}).get("completion_tokens", 0))
                    latencies.append(elapsed)
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    tiers[tier] = tiers.get(tier, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - (started[0] if started else time.perf_counter())
    return {
        "latencies_s": latencies,
        "statuses": statuses,
        "tiers": tiers,
        "wall_s": wall,
        "completion_tokens": tokens,
        "cpu_s": time.process_time(),  # this process's own CPU (warm-up included)
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = asyncio.run(_run(spec))
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
