"""The cascade itself, free of Ray: student first, teacher below the confidence bar."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from router._policy import Decision, ThresholdPolicy
from router._types import Generation, GenerationRequest
from router.config import CascadeConfig
from router.errors import InvalidRequest, TeacherTimeout, TeacherUnavailable

__all__ = ["CascadeResult", "CascadeRouter", "GenerationClient", "Tier"]

Tier = Literal["student", "teacher"]


class GenerationClient(Protocol):
    """One tier as the router sees it (a Serve handle adapter in production)."""

    async def generate(self, request: GenerationRequest) -> Generation: ...


@dataclass(frozen=True)
class CascadeResult:
    generation: Generation
    tier: Tier
    decision: Decision | None
    escalated: bool
    low_confidence: bool
    student: Generation | None
    student_latency_s: float
    teacher_latency_s: float
    outcome: Literal["ok", "teacher_failed_served_student", "student_failed"]
    threshold: float = 0.0
    """The threshold this request was judged against (0.0 when no student decision)."""


class CascadeRouter:
    """Routes one request. ``policy`` is swapped whole by ``reconfigure`` (hot knob)."""

    def __init__(
        self,
        student: GenerationClient,
        teacher: GenerationClient,
        policy: ThresholdPolicy,
        config: CascadeConfig,
    ) -> None:
        self._student = student
        self._teacher = teacher
        self.policy = policy
        self._config = config

    def reconfigure(self, policy: ThresholdPolicy) -> None:
        self.policy = policy

    async def route(self, request: GenerationRequest, force: Tier | None = None) -> CascadeResult:
        if force == "teacher":
            gen, t_lat = await self._call_teacher(request)
            return CascadeResult(gen, "teacher", None, False, False, None, 0.0, t_lat, "ok")
        started = time.perf_counter()
        try:
            student = await self._student.generate(request)
        except InvalidRequest:
            raise
        except Exception:
            if force == "student":
                raise
            gen, t_lat = await self._call_teacher(request)
            s_lat = time.perf_counter() - started - t_lat
            return CascadeResult(gen, "teacher", None, True, False, None, s_lat, t_lat, "student_failed")
        s_lat = time.perf_counter() - started
        policy = self.policy_for(student)
        # An empty answer is never worth serving, however sure the model is of stopping:
        # it scores as "no evidence" (0.0) and escalates.
        decision = policy.decide(student.token_logprobs if student.text.strip() else [])
        if force == "student" or not decision.escalate:
            return CascadeResult(
                student, "student", decision, False, False, None, s_lat, 0.0, "ok", policy.threshold
            )
        try:
            gen, t_lat = await self._call_teacher(request)
        except TeacherUnavailable:
            if self._config.teacher_failure_policy != "serve_student":
                raise
            return CascadeResult(
                student,
                "student",
                decision,
                True,
                True,
                student,
                s_lat,
                0.0,
                "teacher_failed_served_student",
                policy.threshold,
            )
        return CascadeResult(
            gen, "teacher", decision, True, False, student, s_lat, t_lat, "ok", policy.threshold
        )

    def policy_for(self, student: Generation) -> ThresholdPolicy:
        """The answering model's own calibrated threshold, unless one is pinned in config.

        After a hot-swap (or during a canary) two student versions answer side by side;
        each must be judged against the threshold calibrated for it."""
        if (
            self._config.threshold is None
            and student.calibrated_threshold is not None
            and student.calibrated_scorer == self.policy.scorer
        ):
            return ThresholdPolicy(self.policy.scorer, student.calibrated_threshold)
        return self.policy

    async def _call_teacher(self, request: GenerationRequest) -> tuple[Generation, float]:
        started = time.perf_counter()
        try:
            gen = await asyncio.wait_for(
                self._teacher.generate(request), timeout=self._config.teacher_timeout_s
            )
        except TimeoutError as exc:
            raise TeacherTimeout(
                f"teacher did not answer within {self._config.teacher_timeout_s:g}s"
            ) from exc
        except (InvalidRequest, TeacherUnavailable):
            raise
        except Exception as exc:
            raise TeacherUnavailable(f"teacher failed: {type(exc).__name__}: {exc}") from exc
        return gen, time.perf_counter() - started
