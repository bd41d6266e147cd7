"""The cascade itself, free of Ray: student first, teacher below the confidence bar."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar

from router._contract import check_answer
from router._policy import Decision, ThresholdPolicy, resolve_threshold
from router._prior import NO_PRIOR, EscalationPrior
from router._resilience import (
    BreakerState,
    CircuitBreaker,
    Permit,
    RetryPolicy,
    TeacherObserver,
    classify_teacher_error,
)
from router._scoring import confidence_logprobs
from router._types import Generation, GenerationRequest, OutputKind
from router.config import CascadeConfig
from router.errors import (
    InvalidRequest,
    StudentCircuitOpen,
    StudentUnavailable,
    TeacherCircuitOpen,
    TeacherTimeout,
    TeacherUnavailable,
)

__all__ = ["CascadeResult", "CascadeRouter", "GenerationClient", "Tier"]

logger = logging.getLogger(__name__)

Tier = Literal["student", "teacher"]
T = TypeVar("T")


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
    output_kind: OutputKind = "text"
    decided_at_tokens: int | None = None
    """Student tokens seen when a commit rule decided (``router._streaming``; 0: the route
    prior decided before the student was asked, ``router._prior``; ``None``: judged on the
    whole answer)."""
    cancelled_version: str | None = None
    """The student version whose stream was cancelled at its commit point (it escalated on
    a prefix, so there is no ``student`` answer): its escalation still counts for it."""

    @property
    def student_version(self) -> str | None:
        """The student version that was asked, whether or not it finished its answer."""
        answer = self.student_answer
        return answer.model_version if answer is not None else self.cancelled_version

    @property
    def student_answer(self) -> Generation | None:
        """The student's answer, kept or escalated (None when it gave none: it failed, or
        the teacher was asked for by name)."""
        if self.escalated:
            return self.student
        return self.generation if self.tier == "student" else None

    @property
    def teacher_answer(self) -> Generation | None:
        return self.generation if self.tier == "teacher" else None


# A retry is only worth making with at least this share of the teacher deadline left.
MIN_ATTEMPT_SHARE = 0.1


class _NullObserver:
    def teacher_error(self, reason: str) -> None:
        pass

    def teacher_retry(self) -> None:
        pass

    def breaker_transition(self, old: BreakerState, new: BreakerState) -> None:
        pass

    def student_breaker_transition(self, old: BreakerState, new: BreakerState) -> None:
        pass


class CascadeRouter:
    """Routes one request. ``policy`` is swapped whole by ``reconfigure`` (hot knob).

    Teacher calls go through the failure policy of ``router._resilience``: one deadline
    (``teacher_timeout_s``) for all attempts, retries with jittered backoff for transient
    failures, and a circuit breaker that makes calls fail fast while the teacher is down.
    """

    def __init__(
        self,
        student: GenerationClient,
        teacher: GenerationClient,
        policy: ThresholdPolicy,
        config: CascadeConfig,
        *,
        observer: TeacherObserver | None = None,
        prior: EscalationPrior = NO_PRIOR,
        breaker_clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._student = student
        self._teacher = teacher
        self.policy = policy
        self._config = config
        self._observer: TeacherObserver = observer or _NullObserver()
        self.prior = prior
        self._rng = rng or random.Random()
        self._retry = RetryPolicy(
            config.teacher_retries, config.teacher_backoff_s, config.teacher_backoff_max_s
        )
        self.student_breaker = CircuitBreaker(
            config.student_breaker_failure_threshold,
            config.student_breaker_cooldown_s,
            clock=breaker_clock,
            on_transition=self._student_breaker_moved,
        )
        self.breaker = CircuitBreaker(
            config.breaker_failure_threshold,
            config.breaker_cooldown_s,
            clock=breaker_clock,
            on_transition=self._observer.breaker_transition,
        )

    async def route(self, request: GenerationRequest, force: Tier | None = None) -> CascadeResult:
        result = await self._route(request, force)
        kind = request.output_kind
        return result if kind == "text" else replace(result, output_kind=kind)

    async def _route(self, request: GenerationRequest, force: Tier | None) -> CascadeResult:
        if force == "teacher":
            gen, t_lat = await self.call_teacher(request)
            return CascadeResult(gen, "teacher", None, False, False, None, 0.0, t_lat, "ok")
        if force is None and self.prior.skip_student(request.route):
            return await self.teacher_first(request)
        permit = self.student_permit(force)
        if permit is None:  # the student tier is failing: not asked until its probe
            gen, t_lat = await self.call_teacher(request)
            return CascadeResult(gen, "teacher", None, True, False, None, 0.0, t_lat, "student_failed")
        started = time.perf_counter()
        verdict = False
        try:
            # asyncio.timeout, not wait_for: no extra task per request on the hot path.
            async with asyncio.timeout(self._config.student_timeout_s):
                student = await self._student.generate(request)
            self.student_breaker.record_success(permit)
            verdict = True
        except InvalidRequest:
            raise
        except Exception as exc:
            self.student_breaker.record_failure(permit)
            verdict = True
            why = (
                f"the student did not answer within {self._config.student_timeout_s:g}s"
                if isinstance(exc, TimeoutError)
                else f"the student failed: {type(exc).__name__}: {str(exc)[:200]}"
            )
            if force == "student":  # asked for by name: nothing to fall back on
                raise StudentUnavailable(why) from exc
            logger.warning("%s; escalating to the teacher", why)
            gen, t_lat = await self.call_teacher(request)
            s_lat = time.perf_counter() - started - t_lat
            return CascadeResult(gen, "teacher", None, True, False, None, s_lat, t_lat, "student_failed")
        finally:
            if not verdict:  # a client's bad request or a cancellation: free the probe slot
                self.student_breaker.release(permit)
        s_lat = time.perf_counter() - started
        self.prior.saw_version(student.model_version)
        policy = self.policy_for(student)
        # An empty answer is never worth serving, however sure the model is of stopping:
        # it scores as "no evidence" (0.0) and escalates.
        evidence = confidence_logprobs(student, sampled=request.sampled, mode=self._config.sampled_confidence)
        decision = policy.decide(evidence)
        if request.output_kind != "text":
            check = check_answer(request, student.text, student.finish_reason)
            if not check.valid:  # never served by the cascade, however confident
                decision = replace(decision, escalate=True, invalid=check.reason)
        if force == "student" or not decision.escalate:
            return CascadeResult(
                student, "student", decision, False, False, None, s_lat, 0.0, "ok", policy.threshold
            )
        try:
            gen, t_lat = await self.call_teacher(request)
        except TeacherUnavailable:
            if self._config.teacher_failure_policy != "serve_student" or decision.invalid is not None:
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

    async def teacher_first(self, request: GenerationRequest) -> CascadeResult:
        """The route prior sent the request past the student: an escalation decided at 0
        tokens. A teacher that fails falls back as an escalation does: a text request is
        answered by the student under ``serve_student`` (asked now), else the failure stands."""
        threshold = self.policy.threshold
        try:
            gen, t_lat = await self.call_teacher(request)
        except TeacherUnavailable:
            if self._config.teacher_failure_policy != "serve_student" or request.output_kind != "text":
                raise
            started = time.perf_counter()
            async with asyncio.timeout(self._config.student_timeout_s):
                student = await self._student.generate(request)
            s_lat = time.perf_counter() - started
            return CascadeResult(
                student, "student", None, True, True, student, s_lat, 0.0,
                "teacher_failed_served_student", threshold, decided_at_tokens=0,
            )  # fmt: skip
        return CascadeResult(
            gen, "teacher", None, True, False, None, 0.0, t_lat, "ok", threshold, decided_at_tokens=0
        )

    def _student_breaker_moved(self, old: BreakerState, new: BreakerState) -> None:
        log = logger.warning if new == "open" else logger.info
        log("student tier breaker %s -> %s", old, new)
        self._observer.student_breaker_transition(old, new)

    def student_permit(self, force: Tier | None) -> Permit | None:
        """A permit to ask the student (``None``: its breaker is open; go to the teacher).
        A request for the student tier by name has nothing to fall back on: it is refused
        with ``StudentUnavailable`` while the breaker is open."""
        permit = self.student_breaker.allow()
        if permit is None and force == "student":
            wait_s = self.student_breaker.retry_after_s()
            raise StudentCircuitOpen(
                f"the student is failing ({self.student_breaker.failure_threshold} consecutive "
                f"failures); retry in {wait_s:.1f}s",
                retry_after_s=wait_s,
            )
        return permit

    def policy_for(self, student: Generation) -> ThresholdPolicy:
        """The policy for the answering version (``resolve_threshold``'s precedence).

        After a hot-swap (or during a canary) two student versions answer side by side;
        each is judged against the threshold calibrated for it, which the student replica
        carries on the answer with the operator's live override."""
        threshold = resolve_threshold(
            self.policy.scorer,
            fallback=self.policy.threshold,
            pinned=self._config.threshold,
            override=student.threshold_override,
            calibrated=student.calibrated_threshold,
            calibrated_scorer=student.calibrated_scorer,
        )
        return (
            self.policy
            if threshold == self.policy.threshold
            else ThresholdPolicy(self.policy.scorer, threshold)
        )

    async def call_teacher(self, request: GenerationRequest) -> tuple[Generation, float]:
        """The teacher's whole answer under its failure policy (deadline, retries, the
        breaker), and how long it took."""

        async def attempt(left_s: float) -> Generation:
            return await asyncio.wait_for(self._teacher.generate(request), timeout=left_s)

        gen, _permit, latency = await self.teacher_attempts(attempt, settle=True)
        return gen, latency

    async def teacher_attempts(
        self, attempt: Callable[[float], Awaitable[T]], *, settle: bool
    ) -> tuple[T, Permit, float]:
        """``attempt(seconds_left)`` under the teacher's failure policy: one deadline for
        all attempts, retries with backoff, the breaker. ``settle``: a success is recorded
        at once (a whole answer); else the caller records it with the returned permit when
        it knows (a stream whose first piece arrived can still fail later)."""
        timeout_s = self._config.teacher_timeout_s
        started = time.monotonic()
        deadline = started + timeout_s
        retry = 0
        while True:
            permit = self.breaker.allow()
            if permit is None:
                self._observer.teacher_error("circuit_open")
                wait_s = self.breaker.retry_after_s()
                raise TeacherCircuitOpen(
                    "the teacher is failing (circuit breaker open after "
                    f"{self.breaker.failure_threshold} consecutive failures); not called, "
                    f"retry in {wait_s:.1f}s",
                    retry_after_s=wait_s,
                )
            verdict = False
            try:
                value = await attempt(deadline - time.monotonic())
                if settle:
                    self.breaker.record_success(permit)
                verdict = True
                return value, permit, time.monotonic() - started
            except Exception as exc:
                failure = classify_teacher_error(exc)
                if failure is None:  # the request itself is invalid: says nothing about the teacher
                    raise
                if failure.counts:
                    self.breaker.record_failure(permit)
                    verdict = True
                self._observer.teacher_error(failure.reason)
                delay = self._retry.delay(retry, self._rng)
                left_after = deadline - time.monotonic() - delay
                worth_it = left_after > MIN_ATTEMPT_SHARE * timeout_s
                if failure.retryable and retry < self._retry.retries and worth_it:
                    retry += 1
                    self._observer.teacher_retry()
                    await asyncio.sleep(delay)
                    continue
                if isinstance(exc, TimeoutError):
                    raise TeacherTimeout(f"teacher did not answer within {timeout_s:g}s") from exc
                if isinstance(exc, TeacherUnavailable):
                    raise
                raise TeacherUnavailable(f"teacher failed: {type(exc).__name__}: {exc}") from exc
            finally:
                if not verdict:  # a client error or a cancellation: free the probe slot
                    self.breaker.release(permit)
