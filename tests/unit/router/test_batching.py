"""Offline batch generation: a continuously batching engine keeps its window full, no batch
waits for its longest answer, order and errors are the caller's as sent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from router import generate_requests
from router._types import Generation, GenerationRequest


def _gen(text: str) -> Generation:
    return Generation(
        text=text,
        tokens=[text],
        token_logprobs=[-0.1],
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        model_id="fake",
        model_version="v1",
    )


class _Engine:
    """Answers each prompt with itself; ``hold`` prompts wait until ``release`` is set."""

    continuous_batching = True
    model_id = "fake"
    version = "v1"
    max_context = 64

    def __init__(self, hold: set[str] = frozenset(), fail: str | None = None) -> None:  # type: ignore[assignment]
        self.hold = hold
        self.fail = fail
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.calls: list[int] = []

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls.append(len(requests))
        prompt = requests[0].prompt or ""
        self.started.append(prompt)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if prompt == self.fail:
                raise RuntimeError("engine lost")
            if prompt in self.hold:
                await self.release.wait()
            else:
                await asyncio.sleep(0)
                if len(self.started) > 2:  # a request after the first window: release the slow one
                    self.release.set()
            return [_gen(r.prompt or "") for r in requests]
        except asyncio.CancelledError:
            self.cancelled.append(prompt)
            raise
        finally:
            self.in_flight -= 1

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return 1

    async def close(self) -> None:
        return None


class _Batcher(_Engine):
    continuous_batching = False

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls.append(len(requests))
        return [_gen(r.prompt or "") for r in requests]


def _requests(n: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"p{i}", max_tokens=4) for i in range(n)]


async def test_a_slow_answer_does_not_hold_back_the_next_requests() -> None:
    """p0 answers only once p2 has started: a batch of two waiting for its longest answer
    would never start p2 (the wait_for is a deadlock guard, not a timing)."""
    engine = _Engine(hold={"p0"})
    progress: list[tuple[int, int]] = []
    gens = await asyncio.wait_for(
        generate_requests(engine, _requests(5), batch_size=2, on_batch=lambda d, t: progress.append((d, t))),
        timeout=10,
    )
    assert [g.text for g in gens] == [f"p{i}" for i in range(5)]
    assert engine.most_in_flight == 2 and set(engine.calls) == {1}
    assert progress == [(2, 5), (4, 5), (5, 5)]


async def test_a_failed_request_raises_its_error_and_cancels_the_rest() -> None:
    engine = _Engine(hold={"p0"}, fail="p1")
    with pytest.raises(RuntimeError, match="engine lost"):
        await asyncio.wait_for(generate_requests(engine, _requests(4), batch_size=2), timeout=10)
    assert engine.cancelled == ["p0"] and engine.in_flight == 0


async def test_a_backend_without_continuous_batching_gets_whole_batches() -> None:
    batcher = _Batcher()
    gens = await generate_requests(batcher, _requests(5), batch_size=2)
    assert [g.text for g in gens] == [f"p{i}" for i in range(5)]
    assert batcher.calls == [2, 2, 1]
