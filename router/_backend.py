"""The one interface every model engine implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from router._types import Generation, GenerationRequest

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """A model that completes prompts and reports per-token log-probabilities.

    ``token_logprobs`` are the log-probabilities the model gave the tokens it emitted
    (the unprocessed distribution, as vLLM reports by default), including the end-of-text
    token when generation stopped on it: that last "I am done" probability is evidence
    the confidence scorers should see.
    """

    model_id: str
    version: str
    max_context: int

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Prompt length in this model's tokens (for the context-limit check)."""
        ...

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Completes a batch; one result per request, in order."""
        ...

    async def close(self) -> None:
        """Releases engine resources (connections, memory)."""
        ...
