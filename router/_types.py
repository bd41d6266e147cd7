"""Backend-neutral request and result types that cross the Serve handle boundary.

They are pydantic models because they are pickled between Ray actors and because a
malformed one should fail loudly at the boundary, not deep inside generation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatTurn", "Generation", "GenerationRequest"]


class ChatTurn(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class GenerationRequest(BaseModel):
    """One prompt to complete: either raw ``prompt`` text or chat ``messages``."""

    model_config = ConfigDict(frozen=True)

    prompt: str | None = None
    messages: tuple[ChatTurn, ...] | None = None
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    request_id: str = ""

    @property
    def sampled(self) -> bool:
        return self.temperature > 0.0

    def sampling_key(self) -> tuple[bool, float, float]:
        """Requests with equal keys can share one batched ``generate`` call."""
        greedy = self.temperature == 0.0
        return (greedy, 0.0 if greedy else self.temperature, 1.0 if greedy else self.top_p)


class Generation(BaseModel):
    """A completion plus what the cascade needs to judge it."""

    text: str
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[float] = Field(default_factory=list)
    """Per step, the log-probability of the model's most likely token (aligned with
    ``token_logprobs``; equal to it under greedy decoding). Sampled requests are scored
    on it, so the randomness of the draw does not decide the tier; empty where the
    backend cannot report it."""
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    model_id: str
    model_version: str
    calibrated_threshold: float | None = None
    """The threshold calibrated for ``model_version`` (thresholds belong to one model)."""
    calibrated_scorer: str | None = None
    threshold_override: float | None = None
    """An operator's live pin (admin API); beats both calibration and config."""
    calibrated_agreement: float | None = None
    """The served agreement ``model_version`` showed where it was calibrated (its gate
    value): live audits of this version are compared with it."""
    canary: bool = False
    """Answered by the canary slot (audits sample it at a raised share)."""
