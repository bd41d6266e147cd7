"""A slot's stream: its head names the bars and the commit point, its tokens follow, the
stamped whole answer closes it; a swap never closes an engine mid-stream."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

from common.model_dir import CalibrationRecord, CommitRecord
from router import Generation, GenerationRequest, StreamHead, TokenDelta
from router._slots import BackendSlots, Slot
from router._types import ResponseFormat
from tests.fakes.clients import make_generation

TEXT = GenerationRequest(prompt="reverse: abc =", route="reverse")
JSON = GenerationRequest(prompt="as JSON:", response_format=ResponseFormat(type="json_object"))
CALIBRATION = CalibrationRecord(
    scorer="mean_logprob",
    threshold=0.97,
    by_route={"reverse": 0.9},
    commit={"text": CommitRecord(tokens=2, bar=0.95)},
)


class _Whole:
    """A backend that only answers whole (the transformers backend)."""

    model_id = "m"
    version = "v1"
    max_context = 512
    closed = False

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return 3

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return [make_generation("cba", version=self.version) for _ in requests]

    async def close(self) -> None:
        self.closed = True


class _Streaming(_Whole):
    """A backend that streams (``stream_generation``, as the vLLM backend does)."""

    version = "v2"

    def __init__(self) -> None:
        self.produced = 0
        self.cancelled = False

    async def stream_generation(self, request: GenerationRequest) -> Any:
        try:
            for i, piece in enumerate(("c", "b", "a")):
                self.produced += 1
                yield TokenDelta(piece, i, -0.01)
            yield make_generation("cba", version=self.version)
        except GeneratorExit:
            self.cancelled = True
            raise


async def _items(slots: BackendSlots, request: GenerationRequest) -> list[Any]:
    return [item async for item in slots.stream(slots.current, request)]


async def test_a_whole_answer_backend_streams_its_head_tokens_and_stamped_answer():
    slots = BackendSlots(Slot(_Whole(), Path("v1"), CALIBRATION), lambda _: _Whole(), tier="student")
    head, *deltas, whole = await _items(slots, TEXT)
    assert head == StreamHead(
        model_version="v1",
        model_id="m",
        calibrated_threshold=0.9,  # the route's own bar
        calibrated_scorer="mean_logprob",
        commit_tokens=2,
        commit_bar=0.95,
    )
    assert "".join(d.token for d in deltas) == whole.text == "cba"
    assert len(deltas) == len(whole.token_logprobs)  # one per scored token (the fake scores EOS too)
    assert whole.calibrated_threshold == 0.9 and slots.in_flight() == 0


async def test_a_kind_without_a_commit_point_says_so_in_its_head():
    slots = BackendSlots(Slot(_Whole(), Path("v1"), CALIBRATION), lambda _: _Whole(), tier="student")
    head, *_ = await _items(slots, JSON)
    assert head.commit_tokens is None and head.commit_bar is None and head.calibrated_threshold == 0.97


async def test_a_streaming_backend_streams_and_closing_the_stream_cancels_its_generation():
    backend = _Streaming()
    slots = BackendSlots(Slot(backend, Path("v2"), None), lambda _: _Streaming(), tier="student")
    head, *deltas, whole = await _items(slots, TEXT)
    assert head.commit_tokens is None and [d.token for d in deltas] == ["c", "b", "a"]
    assert whole.model_version == "v2"

    backend.produced = 0
    async with aclosing(slots.stream(slots.current, TEXT)) as items:
        await anext(items)  # the head
        await anext(items)  # the first token
        assert slots.in_flight() == 1
    assert backend.cancelled and backend.produced == 1 and slots.in_flight() == 0


async def test_a_swap_waits_for_an_open_stream_before_closing_the_old_engine():
    old = _Streaming()
    slots = BackendSlots(Slot(old, Path("old"), None), lambda _: _Whole(), tier="student")
    items = slots.stream(slots.current, TEXT)
    await anext(items)
    await anext(items)
    await slots.apply(Path("new"), None, 0.0, None)
    assert slots.current.backend.version == "v1" and not old.closed  # still streaming
    rest = [item async for item in items]
    assert isinstance(rest[-1], Generation) and rest[-1].model_version == "v2"
    await slots.drained()
    assert old.closed
