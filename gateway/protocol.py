"""OpenAI-compatible wire models (the HTTP contract), plus Distillery's routing metadata.

Requests allow unknown fields (clients send options from newer API versions), and the
gateway logs the ones it ignored; declared fields are type-checked, so a wrong type is a
400, never a 500. A known OpenAI field that would change the answer and that Distillery
does not implement (``REFUSED_FIELDS``) is refused with a 400 naming it when it carries a
non-default value: nothing that changes what the answer is gets silently ignored.
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
    model_validator,
)

__all__ = [
    "REFUSED_FIELDS",
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
    "FunctionDefinition",
    "JsonSchemaFormat",
    "MessageToolCall",
    "ModelCard",
    "ModelList",
    "ResponseFormatParam",
    "RoutingInfo",
    "StreamOptions",
    "ToolParam",
    "UsageInfo",
]


class DistilleryBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


REFUSED_FIELDS: dict[str, tuple[object, ...]] = {
    # chat
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    # completions
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
}
"""OpenAI (and old vLLM) request fields that change the answer and are not implemented,
with the values that leave the answer as if they were absent. Any other value: 400."""


def _refuse_unimplemented(model: BaseModel) -> None:
    for name, value in (model.model_extra or {}).items():
        allowed = REFUSED_FIELDS.get(name)
        if allowed is not None and value not in allowed:
            raise ValueError(
                f"'{name}' is not supported by this server (it would change the answer); leave it out"
            )


class StreamOptions(DistilleryBaseModel):
    include_usage: bool = False
    """Send one last chunk with the request's token usage (and empty ``choices``)."""


class _AnswerShaping(DistilleryBaseModel):
    """Sampling fields both endpoints share, validated as OpenAI documents them."""

    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    stream_options: StreamOptions | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if len(value) > 300:
            raise ValueError("at most 300 logit_bias entries")
        for key in value:
            if not key.strip().isdigit():
                raise ValueError(f"logit_bias keys must be token ids (non-negative integers), got {key!r}")
        return value

    @model_validator(mode="after")
    def _refused(self) -> _AnswerShaping:
        _refuse_unimplemented(self)
        return self


_TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(DistilleryBaseModel):
    name: Annotated[str, StringConstraints(pattern=_TOOL_NAME)]
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolParam(DistilleryBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class _NamedFunction(DistilleryBaseModel):
    name: Text


class NamedToolChoice(DistilleryBaseModel):
    type: Literal["function"] = "function"
    function: _NamedFunction


class JsonSchemaFormat(DistilleryBaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: Annotated[str, StringConstraints(pattern=_TOOL_NAME)] = "response"
    description: Text | None = None
    json_schema: dict[str, Any] | bool = Field(alias="schema")
    strict: bool | None = None


class ResponseFormatParam(DistilleryBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatParam:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object with a 'schema'")
        return self


class ToolCallFunction(DistilleryBaseModel):
    name: Text
    arguments: Text = "{}"
    """A JSON object's text, as the assistant wrote it."""


class MessageToolCall(DistilleryBaseModel):
    id: Text
    type: Literal["function"] = "function"
    function: ToolCallFunction


class TextPart(DistilleryBaseModel):
    type: Literal["text"]
    text: Text


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
    decided_at_tokens: int | None = None
    """A live stream decided on a prefix: the student tokens written when it was decided
    (its first text left then). Absent: decided on the whole answer."""


class CompletionRequest(_AnswerShaping):
    model: Text
    prompt: Text | list[Text]
    max_tokens: int | None = Field(default=16)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    """Answers per prompt (at most ``server.max_n``)."""
    response_format: ResponseFormatParam | None = None
    """Honoured on completions too (as vLLM's server does)."""
    stream: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    stop: Text | list[Text] | None = None
    user: Text | None = None
    metadata: Metadata | None = None


class ChatMessage(DistilleryBaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text | list[TextPart] | None = None
    """A string or a list of ``text`` parts (other part types: 400 naming the type);
    null only for an assistant turn that calls tools."""
    name: Text | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: Text | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: object) -> object:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(
                        f"content parts of type {kind!r} are not supported: this server takes text only"
                    )
        return value

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content may be null only in an assistant turn with tool_calls")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant turns carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool turn needs the tool_call_id it answers")
        return self

    @property
    def text(self) -> str:
        """The content as one string (text parts joined by newlines, as vLLM joins them)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class ChatCompletionRequest(_AnswerShaping):
    model: Text
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    """Choices to return (at most ``server.max_n``); with a ``seed``, choice ``i`` samples
    with ``seed + i``."""
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stop: Text | list[Text] | None = None
    user: Text | None = None
    metadata: Metadata | None = None
    response_format: ResponseFormatParam | None = None
    tools: list[ToolParam] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


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
    usage: UsageInfo | None = None


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReason | None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    distillery: RoutingInfo
    """The routing of the first choice (every choice's in ``distillery_choices``)."""
    distillery_choices: list[RoutingInfo] | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str]


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    distillery: RoutingInfo | None = None
    usage: UsageInfo | None = None


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
