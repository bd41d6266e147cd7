"""Shadow audits: a share of the answers the student served is asked of the teacher again,
off the hot path, and the two answers are compared.

The cascade only sees the student's own confidence; an answer that is confident and wrong
(a *missed escalation*) is served and, without an audit, never seen again. The auditor
samples student-served answers (``share``; ``canary_share`` for the canary's, so a
candidate's live agreement is known before it is promoted), bounds the teacher load it
adds (a token bucket of ``max_per_s`` calls, a bounded queue, ``concurrency`` calls at
once) and counts every audit it had to drop, by reason.

It never delays a client: ``offer`` is synchronous and cheap (a coin flip, a token, a
``put_nowait``); the gateway calls it once the response has been sent, and the teacher call
runs in a worker task. Only greedy requests are audited: a sampled answer differs from the
teacher's greedy one by design, and the comparison would count noise as disagreement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, Field

from router._cascade import CascadeResult, GenerationClient
from router._contract import answer_agrees
from router._types import Generation, GenerationRequest

__all__ = [
    "AUDIT_DROP_REASONS",
    "AuditConfig",
    "AuditObserver",
    "AuditVerdict",
    "ShadowAuditor",
    "TokenBucket",
]

logger = logging.getLogger(__name__)

AUDIT_DROP_REASONS = ("rate_limited", "queue_full", "teacher_unavailable", "teacher_error", "closed")
"""Why a sampled audit was not completed: over the teacher-call cap, the queue full, the
teacher's circuit breaker open, the teacher call failed, the gateway stopping."""


class AuditConfig(BaseModel):
    """Shadow audits of served answers (``router._audit``).

    Parameters:
        share (`float`, defaults to 0.02): share of the student-served greedy answers of the
            current version sent to the teacher again. 0 turns audits off (the canary then
            judges on escalations alone).
        canary_share (`float`, defaults to 0.25): the same for the canary's answers while a
            canary runs: its live agreement needs ``canary.min_audits`` samples within the
            canary's window.
        max_per_s (`float`, defaults to 2.0), burst (`int`, defaults to 4): the cap on audit
            calls to the teacher (a token bucket); sampled audits over it are dropped
            (``rate_limited``), never queued up behind client traffic.
        queue_size (`int`, defaults to 64): audits waiting for a teacher call; a full queue
            drops (``queue_full``).
        concurrency (`int`, defaults to 2): audit calls in flight at once.
        timeout_s (`float`, defaults to 30): deadline of one audit call.
    """

    share: float = Field(default=0.02, ge=0.0, le=1.0)
    canary_share: float = Field(default=0.25, ge=0.0, le=1.0)
    max_per_s: float = Field(default=2.0, gt=0.0)
    burst: int = Field(default=4, ge=1)
    queue_size: int = Field(default=64, ge=1)
    concurrency: int = Field(default=2, ge=1)
    timeout_s: float = Field(default=30.0, gt=0.0)

    @property
    def enabled(self) -> bool:
        return self.share > 0.0 or self.canary_share > 0.0


@dataclass(frozen=True)
class AuditVerdict:
    """One completed audit: the answer served, the teacher's, and whether they agree."""

    request: GenerationRequest
    student: Generation
    teacher: Generation
    agreed: bool
    teacher_latency_s: float
    label: str | None = None
    """The request's own route label (``metadata.route``), if it sent one."""


class AuditObserver(Protocol):
    """Where audit outcomes go (the gateway's metrics and its feedback sink)."""

    def audit_verdict(self, verdict: AuditVerdict) -> None: ...

    def audit_dropped(self, reason: str) -> None: ...


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


@dataclass(frozen=True)
class _Job:
    request: GenerationRequest
    student: Generation
    label: str | None


class ShadowAuditor:
    """Samples served answers and audits them against the teacher in worker tasks.

    ``agree(answer, reference)`` is the configured agreement metric
    (``router.AgreementMetric``), used for free-text requests (a structured one agrees
    structurally, ``router._contract.answer_agrees``); ``teacher_available`` is
    consulted before each call (the cascade's circuit breaker: an audit never adds load
    to a teacher that is failing)."""

    def __init__(
        self,
        teacher: GenerationClient,
        agree: Callable[[str, str], bool],
        config: AuditConfig,
        observer: AuditObserver,
        *,
        teacher_available: Callable[[], bool] = lambda: True,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._teacher = teacher
        self._agree = agree
        self._config = config
        self._observer = observer
        self._teacher_available = teacher_available
        self._rng = rng or random.Random()
        self._bucket = TokenBucket(config.max_per_s, config.burst, clock=clock)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=config.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def offer(self, request: GenerationRequest, result: CascadeResult, label: str | None = None) -> bool:
        """Maybe audits one routed request; True if it was queued. Never awaits."""
        if result.tier != "student" or result.escalated or result.decision is None or request.sampled:
            return False
        served = result.generation
        share = self._config.canary_share if served.canary else self._config.share
        if share <= 0.0 or self._rng.random() >= share:
            return False
        if self._closed:
            self._observer.audit_dropped("closed")
            return False
        if not self._bucket.take():
            self._observer.audit_dropped("rate_limited")
            return False
        try:
            self._queue.put_nowait(_Job(request, served, label))
        except asyncio.QueueFull:
            self._observer.audit_dropped("queue_full")
            return False
        self._start_workers()
        return True

    def _start_workers(self) -> None:
        if self._workers:
            return
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(self._config.concurrency)]

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._audit(job)
            except Exception:  # an observer's bug must not stop the worker
                logger.exception("audit of %s failed", job.request.request_id)
            finally:
                self._queue.task_done()

    async def _audit(self, job: _Job) -> None:
        if not self._teacher_available():
            self._observer.audit_dropped("teacher_unavailable")
            return
        reference = job.request.model_copy(update={"temperature": 0.0, "top_p": 1.0})
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.timeout_s):
                teacher = await self._teacher.generate(reference)
        except Exception as exc:
            logger.info("audit teacher call failed: %s: %s", type(exc).__name__, str(exc)[:200])
            self._observer.audit_dropped("teacher_error")
            return
        student = job.student
        agreed = answer_agrees(
            job.request, student.text, student.finish_reason, teacher.text, self._agree, teacher.finish_reason
        )
        self._observer.audit_verdict(
            AuditVerdict(job.request, job.student, teacher, agreed, time.monotonic() - started, job.label)
        )

    async def join(self) -> None:
        """Waits until every queued audit is done (tests, benchmarks, a clean stop)."""
        await self._queue.join()

    async def close(self) -> None:
        """Stops the workers; audits still queued are dropped and counted."""
        self._closed = True
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self._observer.audit_dropped("closed")
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
