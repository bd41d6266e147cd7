"""Teacher failure policy: a circuit breaker, retries with backoff, and failure classes.

Pure logic (no Ray, no HTTP): the clock and the random source are injected, so every
transition is unit-tested without sleeping. ``CascadeRouter`` wires them around its
teacher calls.

Breaker rule: **N consecutive failures** open it (not a failure ratio over a window).
The teacher fails mostly all-or-nothing (down, overloaded, unreachable); a consecutive
count opens within the first N failed calls of an outage at any traffic rate, needs no
minimum-volume knob, and is exact to test. Intermittent single failures, which a ratio
window would catch, are what the retries absorb. Each *attempt* counts (a retry is a
call), as in resilience4j's Retry(CircuitBreaker(call)).

    closed --N consecutive failures--> open --cooldown--> half_open
    half_open --probe succeeds--> closed
    half_open --probe fails-----> open (a new cooldown)

While half-open exactly one probe call is let through; every other call fails fast until
the probe's verdict. The open -> half_open move happens on the first call after the
cooldown (the state read by ``state`` already reports it).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from router.errors import (
    InvalidRequest,
    ReplicaUnavailable,
    TeacherCircuitOpen,
    TeacherConnectionError,
    TeacherHTTPError,
    TeacherTimeout,
    TeacherUnavailable,
)

__all__ = [
    "BREAKER_STATE_CODES",
    "TEACHER_ERROR_REASONS",
    "BreakerState",
    "CircuitBreaker",
    "Permit",
    "RetryPolicy",
    "TeacherFailure",
    "TeacherObserver",
    "classify_teacher_error",
]

BreakerState = Literal["closed", "half_open", "open"]
BREAKER_STATE_CODES: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}
Permit = Literal["call", "probe"]

TEACHER_ERROR_REASONS = (
    "timeout",
    "connection",
    "replica_unavailable",
    "http_429",
    "http_5xx",
    "http_4xx",
    "unavailable",
    "error",
    "circuit_open",
)
"""Every value the ``reason`` of a teacher error can take (a bounded metric label)."""

TRANSIENT_HTTP = frozenset({429, 502, 503, 504})


class TeacherObserver(Protocol):
    """Receives what the teacher calls did, and the student tier's breaker (the gateway's
    metrics implement it)."""

    def teacher_error(self, reason: str) -> None: ...

    def teacher_retry(self) -> None: ...

    def breaker_transition(self, old: BreakerState, new: BreakerState) -> None: ...

    def student_breaker_transition(self, old: BreakerState, new: BreakerState) -> None: ...


class CircuitBreaker:
    """Consecutive-failure circuit breaker with one half-open probe (see the module doc).

    Callers ask ``allow()`` for a permit before each call (``None``: fail fast), then
    report ``record_success``/``record_failure`` with it, or ``release`` when the call
    ended with no verdict on the teacher's health (a client error, a cancellation).
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown_s <= 0:
            raise ValueError("cooldown_s must be positive")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_transition = on_transition
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The effective state now (an open breaker whose cooldown ran out is half-open)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 unless open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def allow(self) -> Permit | None:
        state = self.state
        if state != self._state:
            self._move(state)
        if state == "closed":
            return "call"
        if state == "half_open" and not self._probing:
            self._probing = True
            return "probe"
        return None

    def record_success(self, permit: Permit) -> None:
        if permit == "probe":
            self._probing = False
        self._failures = 0
        if self._state != "closed":
            self._move("closed")

    def record_failure(self, permit: Permit) -> None:
        if permit == "probe":
            self._probing = False
        if self._state == "half_open":
            self._open()
        elif self._state == "closed":
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open()
        # Already open: a late failure of a call let through before it opened changes nothing.

    def release(self, permit: Permit) -> None:
        if permit == "probe":
            self._probing = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._move("open")

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old != new and self._on_transition is not None:
            self._on_transition(old, new)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: the n-th retry waits U(0, min(max, base * 2**n)).

    Full jitter spreads the retries of many requests that failed together (a teacher
    outage fails them all at once) instead of re-synchronising them.
    """

    retries: int
    backoff_s: float
    backoff_max_s: float

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.backoff_max_s, self.backoff_s * (2**retry)))


@dataclass(frozen=True)
class TeacherFailure:
    """How one failed teacher call is treated."""

    reason: str
    """Bounded metric label (one of ``TEACHER_ERROR_REASONS``)."""
    retryable: bool
    """Transient: another attempt may succeed (connection errors, 429/502/503/504, a replica
    that died under the call). Timeouts are not retried: the time budget is spent."""
    counts: bool
    """Evidence that the teacher is unhealthy (feeds the breaker). A 4xx other than 429 is
    about the request, not the teacher."""


def _cause(exc: BaseException) -> BaseException:
    """An error raised in another Serve replica arrives as Ray's wrapper (a subclass of the
    original class); its ``cause`` holds the original, with its attributes."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def classify_teacher_error(exc: BaseException) -> TeacherFailure | None:
    """The failure class of a teacher call's exception; ``None`` for the client's own error."""
    original = _cause(exc)
    if isinstance(original, InvalidRequest) or isinstance(exc, InvalidRequest):
        return None
    if isinstance(original, TeacherCircuitOpen):
        return TeacherFailure("circuit_open", retryable=False, counts=False)
    if isinstance(original, TeacherHTTPError):
        status = original.status
        if status == 429:
            return TeacherFailure("http_429", retryable=True, counts=True)
        if status >= 500:
            return TeacherFailure("http_5xx", retryable=status in TRANSIENT_HTTP, counts=True)
        return TeacherFailure("http_4xx", retryable=False, counts=False)
    if isinstance(original, TeacherTimeout | TimeoutError):
        return TeacherFailure("timeout", retryable=False, counts=True)
    if isinstance(original, TeacherConnectionError | ConnectionError):
        return TeacherFailure("connection", retryable=True, counts=True)
    if isinstance(original, ReplicaUnavailable):
        return TeacherFailure("replica_unavailable", retryable=True, counts=True)
    if isinstance(original, TeacherUnavailable):
        return TeacherFailure("unavailable", retryable=False, counts=True)
    return TeacherFailure("error", retryable=False, counts=True)
