"""The escalation event: the training signal the loop lives on. JSON on the wire.

Wire format (topic ``distillery.escalations``, key = ``request_id`` UTF-8, value = the
event's JSON, UTF-8)::

    {"schema_version": 3, "kind": "escalation", "request_id": "cmpl-...-0",
     "created_at": 1795441660.12, "prompt": "shift: abc =", "messages": null,
     "student_answer": "abc", "student_confidence": 0.87,
     "student_scores": {"mean_logprob": 0.87, "min_logprob": 0.41, ...},
     "teacher_answer": "bcd", "student_version": "student-aa15cf9f",
     "teacher_version": "teacher-2e66604e", "student_latency_s": 0.021,
     "teacher_latency_s": 0.034, "route": "completions", "skill": "shift",
     "threshold": 0.98, "scorer": "mean_logprob", "prompt_tokens": 7,
     "student_tokens": 3, "teacher_tokens": 3, "redactions": 0, "output_kind": "text"}

``kind`` is ``escalation`` (teacher answered), ``sample`` (a confident student answer,
sampled for the drift reference; ``teacher_answer`` is null), ``audit`` (a shadow audit
found the served student answer disagreeing with the teacher's: a missed escalation;
``request_id`` is the audited request's plus ``:audit``) or ``feedback`` (the application
rated an answer through ``POST /v1/feedback``: ``rating``, optional ``correction`` and
``comment``; ``tier`` says which tier's answer was rated). Version 2 added the last two
kinds and their fields.

Version 3 added the request's output contract, so a structured request is distilled as it
was served: ``response_format`` (``{"type": "json_object" | "json_schema", "json_schema":
{...}, "name", "strict"}``, the schema as a JSON object), ``tools`` (``[{"name",
"description", "parameters": {...}, "strict"}]``), ``tool_choice`` and
``parallel_tool_calls`` (null without tools), ``output_kind`` (``text``, ``json`` or
``tool_call``); each turn in ``messages`` may carry ``tool_calls`` (``[{"id", "name",
"arguments": {...}}]``, the arguments' text where they are not an object),
``tool_call_id`` and ``name``. A tool-call answer
(``teacher_answer``, ``student_answer``) is its canonical text
(``router._contract.tool_calls_text``): the JSON list for a forced call, wrapped in
``<tool_call>...</tool_call>`` in ``auto`` mode. Every new field is optional, so an event
of version 1 or 2 reads as a text request.

Readers accept any ``schema_version`` up to their own and ignore unknown fields; an older
reader dead-letters a newer version (a consumer of version 2 refuses events of version 3),
so upgrade consumers before gateways.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SCHEMA_VERSION",
    "EscalationEvent",
    "EventKind",
    "EventMessage",
    "EventResponseFormat",
    "EventTool",
    "EventToolCall",
]

SCHEMA_VERSION = 3

EventKind = Literal["escalation", "sample", "audit", "feedback"]


class EventToolCall(BaseModel):
    """One call an assistant turn made; ``arguments`` as a JSON object (its raw text when
    it was not one)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = ""
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class EventMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    role: str
    content: str
    tool_calls: tuple[EventToolCall, ...] = ()
    tool_call_id: str | None = None
    """A ``tool`` turn: the call it answers."""
    name: str | None = None


class EventTool(BaseModel):
    """A function the request offered (``parameters``: its JSON Schema)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    description: str = ""
    parameters: dict[str, Any] | bool = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False


class EventResponseFormat(BaseModel):
    """The request's ``response_format``: any JSON object, or one valid under
    ``json_schema``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["json_object", "json_schema"]
    json_schema: dict[str, Any] | bool | None = None
    name: str = "response"
    strict: bool = False


class EscalationEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    kind: EventKind = "escalation"
    request_id: str = Field(min_length=1, max_length=200)
    created_at: float = Field(default_factory=time.time)
    prompt: str | None = None
    messages: tuple[EventMessage, ...] | None = None
    student_answer: str | None = None
    student_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    student_scores: dict[str, float] = Field(default_factory=dict)
    teacher_answer: str | None = None
    teacher_finish_reason: Literal["stop", "length"] | None = None
    """``length``: the teacher's answer was cut by the token limit. It is served (the
    client set the limit) but never taught: a cut-off answer teaches the student not to
    stop (``teacher_label``). None on events from before the field existed."""
    student_version: str | None = None
    teacher_version: str | None = None
    student_latency_s: float | None = None
    teacher_latency_s: float | None = None
    route: str | None = None
    skill: str | None = None
    threshold: float | None = None
    scorer: str | None = None
    prompt_tokens: int | None = None
    student_tokens: int | None = None
    teacher_tokens: int | None = None
    redactions: int = 0
    tier: Literal["student", "teacher"] | None = None
    """``feedback``: the tier whose answer was rated."""
    rating: float | None = Field(default=None, ge=0.0, le=1.0)
    """``feedback``: 1.0 good ... 0.0 bad (a boolean rating is 1.0 or 0.0)."""
    correction: str | None = None
    """``feedback``: the right answer, as the application knows it."""
    comment: str | None = None
    response_format: EventResponseFormat | None = None
    tools: tuple[EventTool, ...] = ()
    tool_choice: str | None = None
    """``none``, ``auto``, ``required`` or a function's name (null without ``tools``)."""
    parallel_tool_calls: bool | None = None
    output_kind: Literal["text", "json", "tool_call"] = "text"
    """What the answer had to be (thresholds and the gate's checks are per kind)."""

    def teacher_label(self) -> str | None:
        """The teacher's answer as a training or gate label: stripped; None when empty or
        cut off by the token limit (the real teacher rambles on some prompts: 52 of 138
        escalated ``capital`` answers in a loop-robustness run ran into the limit, and a
        refresh trained on them answered those routes without stopping)."""
        answer = (self.teacher_answer or "").strip()
        if not answer or self.teacher_finish_reason == "length":
            return None
        return answer

    def prompt_text(self) -> str:
        """The prompt as one string (the last user turn for chat)."""
        if self.prompt is not None:
            return self.prompt
        users = [m.content for m in self.messages or () if m.role == "user"]
        return users[-1] if users else ""

    def to_wire(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_wire(cls, raw: bytes) -> EscalationEvent:
        return cls.model_validate_json(raw)
