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

``stream: true`` sends streamed requests and reads their SSE: ``ttfts_s`` holds each
measured request's time to its first non-empty text (what a reader of the stream sees
first). ``keep: true`` adds ``records``: per measured request (by index into the prompts),
its status, tier, text, time to first text and latency, for comparing answers across
servers. ``extra``: fields added to every request body.
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
    stream = bool(spec.get("stream"))
    keep = bool(spec.get("keep"))
    extra: dict[str, Any] = spec.get("extra") or {}
    ttfts: list[float] = []
    records: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal tokens
            for i in counter:
                if i == warmup:
                    started.append(time.perf_counter())
                body: dict[str, Any] = {"model": spec["model"], "max_tokens": spec["max_tokens"], **extra}
                n_items = len(conversations) or len(prompts)
                if conversations:
                    body["messages"] = conversations[i % n_items]
                else:
                    body["prompt"] = prompts[i % n_items]
                if stream:
                    body["stream"] = True
                    body["stream_options"] = {"include_usage": True}
                t0 = time.perf_counter()
                first: float | None = None
                text = ""
                used = 0
                async with session.post(url, json=body) as resp:
                    status = resp.status
                    tier = resp.headers.get("x-distillery-tier", "")
                    if stream and status == 200:
                        async for line in resp.content:
                            piece, usage, done = _sse_piece(line)
                            if done:
                                break
                            if piece and first is None:
                                first = time.perf_counter() - t0
                            text += piece
                            used = usage or used
                    else:
                        raw = await resp.read()
                        if status == 200:
                            answer = json.loads(raw)
                            used = int(answer.get("usage", {}).get("completion_tokens", 0))
                            text = _answer_text(answer)
                elapsed = time.perf_counter() - t0
                if i >= warmup:
                    tokens += used
                    latencies.append(elapsed)
                    if first is not None:
                        ttfts.append(first)
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    tiers[tier] = tiers.get(tier, 0) + 1
                    if keep:
                        records.append(
                            {
                                "index": (i - warmup) % n_items,
                                "status": status,
                                "tier": tier,
                                "text": text,
                                "ttft_s": first,
                                "latency_s": elapsed,
                            }
                        )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - (started[0] if started else time.perf_counter())
    return {
        "latencies_s": latencies,
        "statuses": statuses,
        "tiers": tiers,
        "wall_s": wall,
        "completion_tokens": tokens,
        "cpu_s": time.process_time(),  # this process's own CPU (warm-up included)
        "ttfts_s": ttfts,
        "records": records,
    }


def _sse_piece(line: bytes) -> tuple[str, int, bool]:
    """One SSE line: its text (chat delta content or completion text), the usage's
    completion tokens when it carries them, and whether it is ``[DONE]``."""
    data = line.decode().strip()
    if not data.startswith("data:"):
        return "", 0, False
    data = data[5:].strip()
    if data == "[DONE]":
        return "", 0, True
    chunk = json.loads(data)
    used = int((chunk.get("usage") or {}).get("completion_tokens", 0))
    text = ""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        text += (delta.get("content") or "") if delta is not None else (choice.get("text") or "")
    return text, used, False


def _answer_text(answer: dict[str, Any]) -> str:
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message")
    return str((message.get("content") or "") if message is not None else (choice.get("text") or ""))


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = asyncio.run(_run(spec))
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
