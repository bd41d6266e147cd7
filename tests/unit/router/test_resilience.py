"""Teacher failure policy: breaker transitions, retry classes and budget, wiring in the cascade.

Pure logic with fakes (a scripted teacher, a hand-driven clock); the real thing is
exercised through the gateway in tests/chaos/.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from router import (
    CascadeConfig,
    CascadeRouter,
    CircuitBreaker,
    GenerationRequest,
    RetryPolicy,
    ThresholdPolicy,
)
from router._resilience import classify_teacher_error
from router.errors import (
    PromptTooLong,
    ReplicaUnavailable,
    TeacherCircuitOpen,
    TeacherConnectionError,
    TeacherHTTPError,
    TeacherTimeout,
    TeacherUnavailable,
)
from tests.fakes.clients import FakeTier, make_generation

REQ = GenerationRequest(prompt="shift: abc =", max_tokens=8)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """The observer side (the gateway's metrics implement the same three methods)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.retries = 0
        self.transitions: list[tuple[str, str]] = []

    def teacher_error(self, reason: str) -> None:
        self.errors.append(reason)

    def teacher_retry(self) -> None:
        self.retries += 1

    def breaker_transition(self, old: str, new: str) -> None:
        self.transitions.append((old, new))

    def student_breaker_transition(self, old: str, new: str) -> None:
        self.transitions.append((f"student:{old}", f"student:{new}"))


class ScriptedTeacher:
    """Fails with the scripted exceptions in order, then answers."""

    def __init__(self, *failures: BaseException, delay_s: float = 0.0) -> None:
        self.failures = list(failures)
        self.delay_s = delay_s
        self.calls = 0

    async def generate(self, request: GenerationRequest):
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures:
            raise self.failures.pop(0)
        return make_generation("bcd", 0.99, "t1")


def _cascade(teacher, *, student_prob=0.5, clock=None, **cfg):
    recorder = Recorder()
    cfg = {"teacher_backoff_s": 0.01, "teacher_backoff_max_s": 0.02, **cfg}
    router = CascadeRouter(
        FakeTier(lambda r: make_generation("abc", student_prob, "s1")),
        teacher,
        ThresholdPolicy("mean_logprob", 0.95),
        CascadeConfig(**cfg),
        observer=recorder,
        breaker_clock=clock or time.monotonic,
        rng=random.Random(0),
    )
    return router, recorder


# ---- the breaker on its own --------------------------------------------------------------
def test_breaker_opens_after_n_consecutive_failures_and_a_success_resets_the_count():
    clock, seen = Clock(), []
    b = CircuitBreaker(3, 10.0, clock=clock, on_transition=lambda o, n: seen.append((o, n)))
    for _ in range(2):
        b.record_failure(b.allow())
    b.record_success(b.allow())  # not consecutive any more
    assert b.consecutive_failures == 0
    for _ in range(2):
        b.record_failure(b.allow())
    assert b.state == "closed"
    b.record_failure(b.allow())
    assert b.state == "open" and seen == [("closed", "open")]
    assert b.allow() is None  # fail fast
    clock.now += 4
    assert b.retry_after_s() == pytest.approx(6.0)


def test_half_open_lets_exactly_one_probe_through_and_its_verdict_decides():
    clock, seen = Clock(), []
    b = CircuitBreaker(1, 10.0, clock=clock, on_transition=lambda o, n: seen.append((o, n)))
    b.record_failure(b.allow())
    clock.now += 10
    assert b.state == "half_open" and b.retry_after_s() == 0.0
    probe = b.allow()
    assert probe == "probe"
    assert b.allow() is None  # one probe at a time
    b.record_failure(probe)
    assert b.state == "open"  # a failed probe re-opens for a whole new cooldown
    clock.now += 9.9
    assert b.allow() is None
    clock.now += 0.1
    probe = b.allow()
    assert probe == "probe"
    b.record_success(probe)
    assert b.state == "closed" and b.allow() == "call"
    assert seen == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_a_released_probe_frees_the_slot_without_a_verdict():
    clock = Clock()
    b = CircuitBreaker(1, 1.0, clock=clock)
    b.record_failure(b.allow())
    clock.now += 1
    probe = b.allow()
    assert probe == "probe"
    b.release(probe)
    assert b.state == "half_open" and b.allow() == "probe"


def test_breaker_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0.0)


def test_backoff_is_full_jitter_capped_exponential():
    policy = RetryPolicy(retries=5, backoff_s=0.1, backoff_max_s=0.5)
    rng = random.Random(1)
    for retry, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (6, 0.5)]:
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # spread over the whole range, not a constant


class _RayLikeWrapper(TeacherUnavailable):
    """What Ray hands the ingress for an error raised in another replica: a subclass of the
    original class, without its instance attributes, the original in ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("remote traceback ...")
        self.cause = cause


@pytest.mark.parametrize(
    ("exc", "reason", "retryable", "counts"),
    [
        (TeacherConnectionError("refused"), "connection", True, True),
        (ConnectionResetError("reset"), "connection", True, True),
        (TeacherHTTPError("busy", 429), "http_429", True, True),
        (TeacherHTTPError("bad gateway", 502), "http_5xx", True, True),
        (TeacherHTTPError("unavailable", 503), "http_5xx", True, True),
        (TeacherHTTPError("gateway timeout", 504), "http_5xx", True, True),
        (TeacherHTTPError("bug", 500), "http_5xx", False, True),
        (TeacherHTTPError("bad request", 400), "http_4xx", False, False),
        (TeacherHTTPError("bad key", 401), "http_4xx", False, False),
        (TeacherTimeout("slow"), "timeout", False, True),
        (TimeoutError(), "timeout", False, True),
        (ReplicaUnavailable("actor died"), "replica_unavailable", True, True),
        (TeacherUnavailable("malformed"), "unavailable", False, True),
        (RuntimeError("bug"), "error", False, True),
        (_RayLikeWrapper(TeacherHTTPError("x", 503)), "http_5xx", True, True),
    ],
)
def test_failure_classes(exc, reason, retryable, counts):
    failure = classify_teacher_error(exc)
    assert failure is not None
    assert (failure.reason, failure.retryable, failure.counts) == (reason, retryable, counts)


def test_the_clients_own_error_is_no_teacher_failure():
    assert classify_teacher_error(PromptTooLong("long")) is None


# ---- wired into the cascade --------------------------------------------------------------
async def test_transient_failures_are_retried_then_the_teacher_answers():
    teacher = ScriptedTeacher(TeacherConnectionError("refused"), TeacherHTTPError("busy", 503))
    router, rec = _cascade(teacher, teacher_retries=2)
    result = await router.route(REQ)
    assert result.tier == "teacher" and result.generation.text == "bcd"
    assert teacher.calls == 3 and rec.retries == 2
    assert rec.errors == ["connection", "http_5xx"]
    assert router.breaker.consecutive_failures == 0  # the success reset the count


async def test_retries_stop_at_the_configured_count():
    teacher = ScriptedTeacher(*[TeacherConnectionError("refused")] * 5)
    router, rec = _cascade(teacher, teacher_retries=2, breaker_failure_threshold=10)
    with pytest.raises(TeacherConnectionError):
        await router.route(REQ)
    assert teacher.calls == 3 and rec.retries == 2


@pytest.mark.parametrize(
    "exc",
    [TeacherHTTPError("bad request", 400), TeacherHTTPError("bug", 500), TeacherUnavailable("bad json")],
)
async def test_non_transient_failures_are_not_retried(exc):
    teacher = ScriptedTeacher(exc)
    router, rec = _cascade(teacher, teacher_retries=3)
    with pytest.raises(TeacherUnavailable):
        await router.route(REQ)
    assert teacher.calls == 1 and rec.retries == 0


async def test_a_timeout_is_not_retried_and_the_deadline_bounds_the_whole_call():
    teacher = ScriptedTeacher(delay_s=5.0)
    router, rec = _cascade(teacher, teacher_retries=3, teacher_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(TeacherTimeout):
        await router.route(REQ)
    assert time.monotonic() - started < 2.0
    assert teacher.calls == 1 and rec.errors == ["timeout"]


async def test_retries_never_outlive_the_teacher_deadline():
    """Backoff that would not leave a useful share of the deadline is not waited for."""
    teacher = ScriptedTeacher(*[TeacherConnectionError("refused")] * 10)
    router, _ = _cascade(
        teacher,
        teacher_retries=10,
        teacher_timeout_s=0.3,
        teacher_backoff_s=0.2,
        teacher_backoff_max_s=0.2,
        breaker_failure_threshold=50,
    )
    started = time.monotonic()
    with pytest.raises(TeacherConnectionError):
        await router.route(REQ)
    assert time.monotonic() - started <= 0.3 + 0.1
    assert 1 <= teacher.calls < 11


async def test_open_breaker_fails_fast_without_calling_the_teacher():
    clock = Clock()
    teacher = ScriptedTeacher(*[TeacherConnectionError("refused")] * 100)
    router, rec = _cascade(
        teacher, clock=clock, teacher_retries=0, breaker_failure_threshold=3, breaker_cooldown_s=5
    )
    for _ in range(3):
        with pytest.raises(TeacherConnectionError):
            await router.route(REQ)
    assert router.breaker.state == "open"
    calls = teacher.calls
    clock.now += 2
    with pytest.raises(TeacherCircuitOpen) as info:
        await router.route(REQ)
    assert teacher.calls == calls  # not called
    assert info.value.retry_after_s == pytest.approx(3.0)
    assert rec.errors[-1] == "circuit_open"
    assert rec.transitions == [("closed", "open")]


async def test_open_breaker_with_serve_student_answers_from_the_student_marked_low_confidence():
    teacher = ScriptedTeacher(*[TeacherConnectionError("refused")] * 100)
    router, _ = _cascade(
        teacher, teacher_retries=0, breaker_failure_threshold=1, teacher_failure_policy="serve_student"
    )
    first = await router.route(REQ)  # the failure that opens it
    second = await router.route(REQ)  # fail fast
    assert teacher.calls == 1
    for result in (first, second):
        assert result.tier == "student" and result.low_confidence and result.escalated
        assert result.outcome == "teacher_failed_served_student"


async def test_recovery_goes_through_one_half_open_probe():
    clock = Clock()
    teacher = ScriptedTeacher(TeacherConnectionError("refused"), TeacherConnectionError("refused"))
    router, rec = _cascade(
        teacher, clock=clock, teacher_retries=0, breaker_failure_threshold=2, breaker_cooldown_s=5
    )
    for _ in range(2):
        with pytest.raises(TeacherUnavailable):
            await router.route(REQ)
    clock.now += 5  # teacher healthy again (script exhausted), cooldown over
    result = await router.route(REQ)
    assert result.tier == "teacher"
    assert rec.transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_the_clients_invalid_request_never_opens_the_breaker():
    teacher = ScriptedTeacher(*[PromptTooLong("too long")] * 10)
    router, rec = _cascade(teacher, breaker_failure_threshold=2)
    for _ in range(5):
        with pytest.raises(PromptTooLong):
            await router.route(REQ, force="teacher")
    assert router.breaker.state == "closed" and rec.errors == []


async def test_a_cancelled_probe_frees_the_slot():
    clock = Clock()
    teacher = ScriptedTeacher(TeacherConnectionError("refused"), delay_s=0.0)
    router, _ = _cascade(teacher, clock=clock, teacher_retries=0, breaker_failure_threshold=1)
    with pytest.raises(TeacherUnavailable):
        await router.route(REQ, force="teacher")
    clock.now += 100
    teacher.delay_s = 10.0
    task = asyncio.create_task(router.route(REQ, force="teacher"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert router.breaker.allow() == "probe"


# ---- the remote teacher's errors are typed for the policy --------------------------------
async def test_openai_backend_types_its_failures():
    from router import OpenAIHTTPBackend

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    backend = OpenAIHTTPBackend("http://t.test", "m", transport=httpx.MockTransport(refuse))
    with pytest.raises(TeacherConnectionError):
        await backend.generate([REQ])

    backend = OpenAIHTTPBackend(
        "http://t.test", "m", transport=httpx.MockTransport(lambda r: httpx.Response(503, text="busy"))
    )
    with pytest.raises(TeacherHTTPError) as info:
        await backend.generate([REQ])
    assert info.value.status == 503


def test_http_error_survives_pickling_as_it_crosses_replicas():
    import pickle

    err = pickle.loads(pickle.dumps(TeacherHTTPError("busy", 503)))
    assert err.status == 503 and str(err) == "busy"
    opened = pickle.loads(pickle.dumps(TeacherCircuitOpen("open", retry_after_s=2.5)))
    assert opened.retry_after_s == 2.5
