"""Turns routed requests, audits and ratings into feedback events for the producer.

The gateway never waits on Kafka: each ``record*`` builds the event and enqueues it (the
producer redacts PII before anything leaves the process).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any, Literal

from feedback import EscalationEvent, EscalationProducer, EventMessage
from feedback.schema import EventResponseFormat, EventTool, EventToolCall
from gateway._ledger import IssuedAnswer
from router import AuditVerdict, CascadeResult, ChatTurn, GenerationRequest
from router._types import ToolCall

__all__ = ["FeedbackSink", "RouteLabeler"]

RouteLabeler = Callable[[str], str | None]
"""Maps a prompt's text (for chat, the last user turn) to a route label, or None."""


def _event_call(call: ToolCall) -> EventToolCall:
    """The call with its arguments as a JSON object (their text when they are not one)."""
    try:
        arguments: Any = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = call.arguments
    if not isinstance(arguments, dict):
        arguments = call.arguments
    return EventToolCall(id=call.id, name=call.name, arguments=arguments)


def _event_message(turn: ChatTurn) -> EventMessage:
    return EventMessage(
        role=turn.role,
        content=turn.content,
        tool_calls=tuple(_event_call(c) for c in turn.tool_calls),
        tool_call_id=turn.tool_call_id,
        name=turn.name,
    )


def _contract_fields(request: GenerationRequest) -> dict[str, Any]:
    """What the answer had to be, in the event's JSON shape (schemas as JSON objects)."""
    fmt = request.response_format
    fields: dict[str, Any] = {"output_kind": request.output_kind}
    if fmt is not None:
        schema = json.loads(fmt.schema_text) if fmt.schema_text is not None else None
        fields["response_format"] = EventResponseFormat(
            type=fmt.type, json_schema=schema, name=fmt.name, strict=fmt.strict
        )
    if request.tools:
        fields["tools"] = tuple(
            EventTool(
                name=t.name, description=t.description, parameters=json.loads(t.parameters), strict=t.strict
            )
            for t in request.tools
        )
        fields["tool_choice"] = request.tool_choice
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    return fields


class FeedbackSink:
    def __init__(
        self,
        producer: EscalationProducer,
        *,
        sample_rate: float,
        route_label: RouteLabeler | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``route_label`` (``feedback.route_labeler``) labels requests that carry no
        ``metadata.route`` of their own; None leaves them unlabelled. It runs on the
        ingress's event loop for every recorded request, so it must be cheap: it is
        called once here, so whatever it imports lazily is imported at start-up, not on
        the first escalation (which once blocked every request in flight)."""
        self._producer = producer
        self._sample_rate = sample_rate
        self._label = route_label
        self._rng = rng or random.Random()
        if route_label is not None:
            route_label("")

    def record(
        self,
        route: str,
        request: GenerationRequest,
        result: CascadeResult,
        threshold: float,
        scorer: str,
        label: str | None = None,
    ) -> None:
        """``label``: the request's own route label (``metadata.route``), if it sent one."""
        kind: Literal["escalation", "sample"]
        if result.escalated:
            kind = "escalation"
        elif result.tier == "student" and self._rng.random() < self._sample_rate:
            kind = "sample"
        else:
            return
        student, teacher = result.student_answer, result.teacher_answer
        decision = result.decision
        event = EscalationEvent(
            **self._context(request, label, route),
            kind=kind,
            request_id=request.request_id,
            student_answer=student.text if student else None,
            student_confidence=decision.confidence if decision else None,
            student_scores=dict(decision.scores) if decision else {},
            teacher_answer=teacher.text if teacher else None,
            teacher_finish_reason=teacher.finish_reason if teacher else None,
            student_version=result.student_version,
            teacher_version=teacher.model_version if teacher else None,
            student_latency_s=result.student_latency_s or None,
            teacher_latency_s=result.teacher_latency_s or None,
            threshold=threshold,
            scorer=scorer,
            prompt_tokens=result.generation.prompt_tokens,
            student_tokens=student.completion_tokens if student else None,
            teacher_tokens=teacher.completion_tokens if teacher else None,
        )
        self._producer.submit(event)

    def _context(
        self, request: GenerationRequest, label: str | None, route: str | None = None
    ) -> dict[str, Any]:
        """The event fields every kind takes from the request: prompt or turns (with their
        tool calls), the output contract (``response_format``, ``tools``, ``tool_choice``,
        ``parallel_tool_calls``, ``output_kind``), the endpoint (``route``, from the
        request's shape unless given) and the route label (``skill``)."""
        messages = None
        if request.messages is not None:
            messages = tuple(_event_message(t) for t in request.messages)
        route = route or ("chat" if request.messages is not None else "completions")
        fields: dict[str, Any] = {
            "prompt": request.prompt,
            "messages": messages,
            "route": route,
            "skill": label,
            **_contract_fields(request),
        }
        if label is None:
            fields["skill"] = self.route_label(request)
        return fields

    def route_label(self, request: GenerationRequest, label: str | None = None) -> str | None:
        """The request's route label: its own (``metadata.route``), else the labeller's
        reading of its text (for chat, the last user turn), else None."""
        if label is not None or self._label is None:
            return label
        text = (
            request.prompt
            if request.prompt is not None
            else next((t.content for t in reversed(request.messages or ()) if t.role == "user"), "")
        )
        return self._label(text)

    def record_audit(self, verdict: AuditVerdict) -> None:
        """A disagreeing audit: a missed escalation, with the teacher's answer to learn from."""
        if verdict.agreed:
            return
        request, student, teacher = verdict.request, verdict.student, verdict.teacher
        self._producer.submit(
            EscalationEvent(
                **self._context(request, verdict.label),
                kind="audit",
                request_id=f"{request.request_id}:audit",
                student_answer=student.text,
                teacher_answer=teacher.text,
                teacher_finish_reason=teacher.finish_reason,
                student_version=student.model_version,
                teacher_version=teacher.model_version,
                teacher_latency_s=verdict.teacher_latency_s,
                threshold=student.calibrated_threshold,
                prompt_tokens=teacher.prompt_tokens,
                student_tokens=student.completion_tokens,
                teacher_tokens=teacher.completion_tokens,
            )
        )

    def record_rating(
        self, issued: IssuedAnswer, rating: float, correction: str | None, comment: str | None
    ) -> None:
        """The application's rating of one answer, with the request and answers it rates."""
        request = issued.request
        self._producer.submit(
            EscalationEvent(
                **self._context(request, issued.label),
                kind="feedback",
                request_id=request.request_id,
                created_at=time.time(),
                student_answer=issued.student_answer,
                teacher_answer=issued.teacher_answer,
                student_version=issued.student_version,
                teacher_version=issued.teacher_version,
                tier=issued.tier,
                rating=rating,
                correction=correction,
                comment=comment,
            )
        )

    def close(self) -> None:
        self._producer.close()
