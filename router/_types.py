"""Backend-neutral request and result types that cross the Serve handle boundary.

They are pydantic models because they are pickled between Ray actors and because a
malformed one should fail loudly at the boundary, not deep inside generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatTurn",
    "Generation",
    "GenerationRequest",
    "OutputKind",
    "ResponseFormat",
    "StreamHead",
    "TokenDelta",
    "ToolCall",
    "ToolChoice",
    "ToolSpec",
]

OutputKind = Literal["text", "json", "tool_call"]
"""What an answer must be: free text, a JSON value (``response_format``), or tool calls.
Thresholds are calibrated per kind (constrained decoding changes what log-probs mean)."""

ToolChoice = Literal["none", "auto", "required"] | str
"""``none`` / ``auto`` / ``required``, or the name of the one function that must be called."""


class ToolCall(BaseModel):
    """One function call, as the assistant made it (``arguments``: a JSON object's text)."""

    model_config = ConfigDict(frozen=True)

    id: str = ""
    name: str
    arguments: str = "{}"


class ToolSpec(BaseModel):
    """A function the model may call; ``parameters`` is a JSON Schema's canonical text
    (a string, so the request stays hashable and pickles small)."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'
    strict: bool = False


class ResponseFormat(BaseModel):
    """``response_format``: ``json_object`` (any JSON object) or ``json_schema`` (``schema``:
    the schema's canonical JSON text)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["json_object", "json_schema"]
    schema_text: str | None = None
    name: str = "response"
    strict: bool = False


class ChatTurn(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant turn's calls (its ``content`` is then usually empty)."""
    tool_call_id: str | None = None
    """A ``tool`` turn: the call it answers."""

    @property
    def plain(self) -> bool:
        """Role and content only: rendered exactly as before tools existed."""
        return self.name is None and not self.tool_calls and self.tool_call_id is None


class GenerationRequest(BaseModel):
    """One prompt to complete: either raw ``prompt`` text or chat ``messages``."""

    model_config = ConfigDict(frozen=True)

    prompt: str | None = None
    messages: tuple[ChatTurn, ...] | None = None
    max_tokens: int = Field(default=16, ge=1)
    max_tokens_given: bool = True
    """False: the client left ``max_tokens`` out of a chat request, and ``max_tokens`` is
    the server's limit. Each tier then answers up to its own context instead of refusing
    (``router._context.check_fits``), as OpenAI's and vLLM's chat endpoints do; a fixed
    small default cut JSON answers and tool calls of clients that never set it."""
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    request_id: str = ""
    response_format: ResponseFormat | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias in [-100, 100]) pairs, in the answering model's vocabulary."""
    top_logprobs: int = Field(default=0, ge=0, le=20)
    """Alternatives to report per token (``Generation.alternatives``)."""
    route: str | None = None
    """The request's route label (``metadata.route``, else ``feedback.route_labeler``'s),
    set by the gateway before the cascade: the student's answer is judged by its route's
    calibrated threshold where it has one. Never reaches a model."""

    @property
    def sampled(self) -> bool:
        return self.temperature > 0.0

    @property
    def offers_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def output_kind(self) -> OutputKind:
        if self.response_format is not None:
            return "json"
        return "tool_call" if self.offers_tools else "text"

    @property
    def plain_decoding(self) -> bool:
        """Nothing beyond temperature/top_p shapes the logits: any batch can take it."""
        return (
            self.response_format is None
            and self.tool_choice in ("none", "auto")
            and self.seed is None
            and not self.presence_penalty
            and not self.frequency_penalty
            and not self.logit_bias
        )

    def sampling_key(self) -> tuple[bool, float, float]:
        """Requests with equal keys can share one batched ``generate`` call (plain decoding;
        a backend batches a constrained, seeded or penalised request on its own)."""
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
    alternatives: list[dict[str, float]] = Field(default_factory=list)
    """Per emitted token, the ``top_logprobs`` most likely tokens and their log-probs (only
    when the request asked for them)."""
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


@dataclass(frozen=True)
class TokenDelta:
    """One streamed token: its text, id and log-probability (a dataclass, not a model:
    one crosses the Serve handle per token). ``top_logprob``: the most likely token's
    log-prob at that step, what a sampled request is scored on (``None``: not reported)."""

    token: str
    token_id: int
    logprob: float
    top_logprob: float | None = None


@dataclass(frozen=True)
class StreamHead:
    """What a student stream says before its first token: who answers, and the bars the
    cascade judges it by (``Generation``'s stamp, which a stream only has at its end)."""

    model_version: str
    model_id: str = ""
    calibrated_threshold: float | None = None
    calibrated_scorer: str | None = None
    threshold_override: float | None = None
    commit_tokens: int | None = None
    """The version's calibrated commit point for this request's kind (``router._early``);
    ``None``: decide on the whole answer."""
    commit_bar: float | None = None
    canary: bool = False
