"""Offline batch generation over any backend (calibration, the gate, benchmarks)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from router._backend import Backend
from router._slots import continuous_batching
from router._types import Generation, GenerationRequest

__all__ = ["generate_prompts", "generate_requests"]


async def generate_prompts(
    backend: Backend, prompts: Sequence[str], *, max_tokens: int = 24, batch_size: int = 64
) -> list[Generation]:
    """Greedy completions of ``prompts``, in order (``generate_requests`` over raw prompts)."""
    requests = [GenerationRequest(prompt=p, max_tokens=max_tokens) for p in prompts]
    return await generate_requests(backend, requests, batch_size=batch_size)


async def generate_requests(
    backend: Backend,
    requests: Sequence[GenerationRequest],
    *,
    batch_size: int = 64,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Completions of ready-made requests (chat or text), in order; ``on_batch(done,
    total)`` after each ``batch_size`` of them (a progress bar for long labelling runs).

    A backend that batches continuously (vLLM, an OpenAI-compatible server) gets
    ``batch_size`` requests in flight, the next one sent as soon as any finishes: in
    batches of ``batch_size`` each waited for its longest answer while the engine ran
    fewer and fewer sequences. Any other backend gets them ``batch_size`` at a time."""
    if continuous_batching(backend):
        return await _in_flight(backend, requests, batch_size, on_batch)
    out: list[Generation] = []
    for i in range(0, len(requests), batch_size):
        out.extend(await backend.generate(list(requests[i : i + batch_size])))
        if on_batch is not None:
            on_batch(len(out), len(requests))
    return out


async def _in_flight(
    backend: Backend,
    requests: Sequence[GenerationRequest],
    window: int,
    on_batch: Callable[[int, int], None] | None,
) -> list[Generation]:
    slots = asyncio.Semaphore(window)
    done = 0

    async def one(request: GenerationRequest) -> Generation:
        nonlocal done
        async with slots:
            (gen,) = await backend.generate([request])
        done += 1
        if on_batch is not None and (done % window == 0 or done == len(requests)):
            on_batch(done, len(requests))
        return gen

    tasks = [asyncio.ensure_future(one(r)) for r in requests]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        # One failed request (or the caller's cancellation) stops the rest, and the caller
        # gets the error itself (a TaskGroup would wrap it in an ExceptionGroup).
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
