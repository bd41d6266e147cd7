"""The escalation event: the training signal the loop lives on. JSON on the wire.

Wire format (topic ``distillery.escalations``, key = ``request_id`` UTF-8, value = the
event's JSON, UTF-8)::

    {"schema_version": 1, "kind": "escalation", "request_id": "cmpl-...-0",
     "created_at": 1795441660.12, "prompt": "shift: abc =", "messages": null,
     "student_answer": "abc", "student_confidence": 0.87,
     "student_scores": {"mean_logprob": 0.87, "min_logprob": 0.41, ...},
     "teacher_answer": "bcd", "student_version": "student-aa15cf9f",
     "teacher_version": "teacher-2e66604e", "student_latency_s": 0.021,
     "teacher_latency_s": 0.034, "route": "completions", "skill": "shift",
     "threshold": 0.98, "scorer": "mean_logprob", "prompt_tokens": 7,
     "student_tokens": 3, "teacher_tokens": 3, "redactions": 0}

``kind`` is ``escalation`` (teacher answered), ``sample`` (a confident student answer,
sampled for the drift reference; ``teacher_answer`` is null), ``audit`` (a shadow audit
found the served student answer disagreeing with the teacher's: a missed escalation;
``request_id`` is the audited request's plus ``:audit``) or ``feedback`` (the application
rated an answer through ``POST /v1/feedback``: ``rating``, optional ``correction`` and
``comment``; ``tier`` says which tier's answer was rated). Version 2 added the last two
kinds and their fields. Readers accept any ``schema_version`` up to theirs and ignore
unknown fields, so producers can be upgraded first (a consumer of version 1 dead-letters
the new kinds: upgrade consumers before gateways).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SCHEMA_VERSION", "EscalationEvent", "EventKind", "EventMessage"]

SCHEMA_VERSION = 2

EventKind = Literal["escalation", "sample", "audit", "feedback"]


class EventMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: str
    content: str


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
