"""OpenAI-compatible wire models (the HTTP contract), plus Distillery's routing metadata.

Requests allow unknown fields (clients send many OpenAI options we do not implement);
declared fields are type-checked, so a wrong type is a 400, never a 500.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
)

__all__ = [
    "ChatChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
    "DistilleryBaseModel",
    "ErrorInfo",
    "ErrorResponse",
    "FeedbackRequest",
    "FeedbackResponse",
    "ModelCard",
    "ModelList",
    "RoutingInfo",
    "UsageInfo",
]


class DistilleryBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


def _utf8(value: str) -> str:
    """JSON can spell a lone UTF-16 surrogate (``"\\ud800"``); no tokenizer can encode one.
    Refused here, at the edge, before any tier sees it (it once failed inside both tiers,
    escalated, and opened the teacher's circuit breaker for every client)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"text must be valid Unicode: a lone surrogate (U+{ord(value[exc.start]):04X})"
            f" at position {exc.start}"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]
"""A string a model can be fed: valid Unicode (no lone surrogates)."""


Metadata = Annotated[
    dict[
        Annotated[Text, StringConstraints(max_length=64)],
        Annotated[Text, StringConstraints(max_length=512)],
    ],
    Field(max_length=16),
]
"""OpenAI's request ``metadata`` (at most 16 string pairs). ``metadata.route`` labels the
request's route in the feedback events (it wins over ``feedback.route_labeler``)."""


class ErrorInfo(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class RoutingInfo(BaseModel):
    """Which tier answered and why; also sent as ``x-distillery-*`` headers."""

    tier: Literal["student", "teacher"]
    escalated: bool
    confidence: float | None
    threshold: float
    scorer: str
    model_version: str
    low_confidence: bool = False


class CompletionRequest(DistilleryBaseModel):
    model: Text
    prompt: Text | list[Text]
    max_tokens: int | None = Field(default=16)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    stop: Text | list[Text] | None = None
    user: Text | None = None
    metadata: Metadata | None = None


class ChatMessage(DistilleryBaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text


class ChatCompletionRequest(DistilleryBaseModel):
    model: Text
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    logprobs: bool = False
    stop: Text | list[Text] | None = None
    user: Text | None = None
    metadata: Metadata | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    distillery: list[RoutingInfo]


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    distillery: RoutingInfo | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    distillery: RoutingInfo


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    distillery: RoutingInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "distillery"
    tier: Literal["cascade", "student", "teacher"]
    version: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: the application's verdict on one answer it was given.

    ``id`` is the response's ``id`` (``cmpl-...`` or ``chatcmpl-...``); ``index`` the choice
    of a completion that had several prompts. ``rating``: ``true``/``false`` or a float in
    [0, 1] (0.5 and above counts as good). ``correction``: the right answer, if the
    application knows it (it outranks the teacher's as a training label). Unknown fields are
    refused: a misspelt ``rating`` must not be stored as a rating-less record."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: Annotated[Text, StringConstraints(min_length=1, max_length=200)]
    index: int = Field(default=0, ge=0, le=1023)
    rating: StrictBool | Annotated[float, Field(ge=0.0, le=1.0)]
    correction: Annotated[Text, StringConstraints(max_length=32_768)] | None = None
    comment: Annotated[Text, StringConstraints(max_length=4_096)] | None = None

    @field_validator("rating", mode="before")
    @classmethod
    def _bool_or_number(cls, value: object) -> object:
        if isinstance(value, bool):
            return value
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:  # NaN fails too
            raise ValueError("rating must be true, false or a number between 0 and 1")
        return value

    @field_validator("correction")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("correction must not be blank (leave it out instead)")
        return value

    @property
    def score(self) -> float:
        return float(self.rating)


class FeedbackResponse(BaseModel):
    id: str
    """The feedback record's own id (the same for a repeated identical request)."""
    object: Literal["feedback"] = "feedback"
    response_id: str
    index: int
    status: Literal["recorded", "unchanged"]
    """``unchanged``: the same feedback was already recorded for this answer."""
