"""In-memory stand-ins for a tier (pure-logic unit tests only; integration tests use real models)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from router import Generation, GenerationRequest
from router.errors import PromptTooLong


def make_generation(
    text: str, prob: float = 0.999, version: str = "v-test", model_id: str = "fake"
) -> Generation:
    tokens = list(text)
    lp = math.log(prob)
    return Generation(
        text=text,
        tokens=tokens,
        token_logprobs=[lp] * (len(tokens) + 1),
        finish_reason="stop",
        prompt_tokens=5,
        completion_tokens=len(tokens),
        model_id=model_id,
        model_version=version,
    )


class FakeTier:
    """Answers with ``answer(request)``; can be told to fail, stall or reject long prompts."""

    def __init__(
        self,
        answer: Callable[[GenerationRequest], Generation],
        *,
        fail: Exception | None = None,
        delay_s: float = 0.0,
        max_prompt_chars: int | None = None,
    ) -> None:
        self.answer = answer
        self.fail = fail
        self.delay_s = delay_s
        self.max_prompt_chars = max_prompt_chars
        self.calls: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> Generation:
        self.calls.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        if self.max_prompt_chars is not None and len(request.prompt or "") > self.max_prompt_chars:
            raise PromptTooLong("prompt too long for the fake model")
        return self.answer(request)


class FakeProducer:
    """Collects what a feedback sink submits (the real producer is tested against the broker)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def submit(self, event: Any) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


class FakeStreamingStudent:
    """A student that streams ``tokens`` (text, probability) after a ``StreamHead``, then
    the whole answer. Pull-driven like a real stream: it produces a token only when the
    consumer asks, so ``produced`` says how far generation got when something happened;
    ``closed`` says the consumer cancelled it. ``fail_at``: raise instead of that token."""

    def __init__(
        self,
        tokens: list[tuple[str, float]],
        *,
        commit_tokens: int | None = None,
        commit_bar: float | None = None,
        fail_at: int | None = None,
        fail: Exception | None = None,
        version: str = "s1",
    ) -> None:
        from router import StreamHead

        self.tokens = tokens
        self.head = StreamHead(model_version=version, commit_tokens=commit_tokens, commit_bar=commit_bar)
        self.fail_at = fail_at
        self.fail = fail or RuntimeError("student engine died")
        self.produced = 0
        self.closed = False
        self.finished = False
        self.whole_calls = 0
        self.streams = 0
        self.version = version

    def whole(self) -> Generation:
        return Generation(
            text="".join(t for t, _ in self.tokens),
            tokens=[t for t, _ in self.tokens],
            token_logprobs=[math.log(p) for _, p in self.tokens],
            finish_reason="stop",
            prompt_tokens=5,
            completion_tokens=len(self.tokens),
            model_id="fake",
            model_version=self.version,
        )

    async def stream(self, request: GenerationRequest) -> Any:
        from router import TokenDelta

        self.streams += 1
        try:
            yield self.head
            for i, (text, prob) in enumerate(self.tokens):
                await asyncio.sleep(0)
                if self.fail_at == i:
                    raise self.fail
                self.produced += 1
                yield TokenDelta(text, i, math.log(prob))
            self.finished = True
            yield self.whole()
        except GeneratorExit:
            self.closed = True
            raise

    async def generate(self, request: GenerationRequest) -> Generation:
        self.whole_calls += 1
        return self.whole()


class FakeStreamingTeacher:
    """A teacher tier that streams its head, ``pieces``, then the whole answer; can fail
    before its first piece (``fail_first``: that many attempts) or after ``fail_after``."""

    def __init__(
        self,
        pieces: list[str],
        *,
        fail_first: int = 0,
        fail_after: int | None = None,
        fail: Exception | None = None,
    ) -> None:
        self.pieces = pieces
        self.fail_first = fail_first
        self.fail_after = fail_after
        self.fail = fail or ConnectionError("teacher connection reset")
        self.calls = 0
        self.sent = 0
        self.closed = False

    async def stream(self, request: GenerationRequest) -> Any:
        from router import StreamHead, TokenDelta

        self.calls += 1
        try:
            yield StreamHead(model_version="t1", model_id="teacher")
            if self.calls <= self.fail_first:
                raise self.fail
            for i, piece in enumerate(self.pieces):
                await asyncio.sleep(0)
                if self.fail_after == i:
                    raise self.fail
                self.sent += 1
                yield TokenDelta(piece, i, 0.0)
            yield make_generation("".join(self.pieces), 0.99, "t1", model_id="teacher")
        except GeneratorExit:
            self.closed = True
            raise
