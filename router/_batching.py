"""Offline batch generation over any backend (calibration, the gate, benchmarks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from router._backend import Backend
from router._types import Generation, GenerationRequest

__all__ = ["generate_prompts", "generate_requests"]


async def generate_prompts(
    backend: Backend, prompts: Sequence[str], *, max_tokens: int = 24, batch_size: int = 64
) -> list[Generation]:
    """Greedy completions of ``prompts``, ``batch_size`` at a time, in order."""
    out: list[Generation] = []
    for i in range(0, len(prompts), batch_size):
        reqs = [GenerationRequest(prompt=p, max_tokens=max_tokens) for p in prompts[i : i + batch_size]]
        out.extend(await backend.generate(reqs))
    return out


async def generate_requests(
    backend: Backend,
    requests: Sequence[GenerationRequest],
    *,
    batch_size: int = 64,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Completions of ready-made requests (chat or text), ``batch_size`` at a time, in order;
    ``on_batch(done, total)`` after each batch (a progress bar for long labelling runs)."""
    out: list[Generation] = []
    for i in range(0, len(requests), batch_size):
        out.extend(await backend.generate(list(requests[i : i + batch_size])))
        if on_batch is not None:
            on_batch(len(out), len(requests))
    return out
