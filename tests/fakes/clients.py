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
