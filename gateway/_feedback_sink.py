"""Turns routed requests into feedback events and hands them to the producer.

The gateway never waits on Kafka: ``record`` builds the event and enqueues it (the
producer redacts PII before anything leaves the process).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

from feedback import EscalationEvent, EscalationProducer, EventMessage
from router import CascadeResult, GenerationRequest

__all__ = ["FeedbackSink", "RouteLabeler"]

RouteLabeler = Callable[[str], str | None]
"""Maps a prompt's text (for chat, the last user turn) to a route label, or None."""


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
        student = result.student if result.escalated else result.generation
        teacher = result.generation if result.tier == "teacher" else None
        prompt = request.prompt
        messages = None
        if request.messages is not None:
            messages = tuple(EventMessage(role=t.role, content=t.content) for t in request.messages)
        text = (
            prompt
            if prompt is not None
            else next((t.content for t in reversed(request.messages or ()) if t.role == "user"), "")
        )
        decision = result.decision
        event = EscalationEvent(
            kind=kind,
            request_id=request.request_id,
            prompt=prompt,
            messages=messages,
            student_answer=student.text if student else None,
            student_confidence=decision.confidence if decision else None,
            student_scores=dict(decision.scores) if decision else {},
            teacher_answer=teacher.text if teacher else None,
            student_version=student.model_version if student else None,
            teacher_version=teacher.model_version if teacher else None,
            student_latency_s=result.student_latency_s or None,
            teacher_latency_s=result.teacher_latency_s or None,
            route=route,
            skill=label if label is not None else (self._label(text) if self._label else None),
            threshold=threshold,
            scorer=scorer,
            prompt_tokens=result.generation.prompt_tokens,
            student_tokens=student.completion_tokens if student else None,
            teacher_tokens=teacher.completion_tokens if teacher else None,
        )
        self._producer.submit(event)

    def close(self) -> None:
        self._producer.close()
