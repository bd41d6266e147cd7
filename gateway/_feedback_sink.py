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

__all__ = ["FeedbackSink", "demo_skill_label"]

SkillLabeler = Callable[[str], str | None]


def demo_skill_label(prompt: str) -> str | None:
    """Route label for the bundled demo domain (None for any other prompt)."""
    from demo import parse_prompt

    parsed = parse_prompt(prompt)
    return parsed[0] if parsed else None


class FeedbackSink:
    def __init__(
        self,
        producer: EscalationProducer,
        *,
        sample_rate: float,
        skill_label: SkillLabeler = demo_skill_label,
        rng: random.Random | None = None,
    ) -> None:
        self._producer = producer
        self._sample_rate = sample_rate
        self._label = skill_label
        self._rng = rng or random.Random()
        # Warm the labeler at start-up: the demo labeler's first call imports the demo
        # package (torch, transformers: ~7 s here), which on the first escalation blocked
        # the ingress's event loop -- and every request in flight -- past the teacher deadline.
        skill_label("")

    def record(
        self, route: str, request: GenerationRequest, result: CascadeResult, threshold: float, scorer: str
    ) -> None:
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
            skill=self._label(text),
            threshold=threshold,
            scorer=scorer,
            prompt_tokens=result.generation.prompt_tokens,
            student_tokens=student.completion_tokens if student else None,
            teacher_tokens=teacher.completion_tokens if teacher else None,
        )
        self._producer.submit(event)

    def close(self) -> None:
        self._producer.close()
