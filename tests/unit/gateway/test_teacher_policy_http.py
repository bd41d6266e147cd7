"""The gateway's side of the teacher failure policy: metrics and the 503's Retry-After."""

from __future__ import annotations

from gateway.errors import error_headers, to_error_response
from gateway.metrics import GatewayMetrics
from router.errors import StudentUnavailable, TeacherCircuitOpen, TeacherConnectionError


def _value(m: GatewayMetrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return m.registry.get_sample_value(name, labels or {})


def test_breaker_state_errors_and_retries_are_exported():
    m = GatewayMetrics()
    assert _value(m, "distillery_teacher_errors_total", {"reason": "timeout"}) == 0  # exported from 0
    m.breaker_transition("closed", "open")
    assert _value(m, "distillery_teacher_breaker_state") == 2
    m.breaker_transition("open", "half_open")
    assert _value(m, "distillery_teacher_breaker_state") == 1
    m.breaker_transition("half_open", "closed")
    assert _value(m, "distillery_teacher_breaker_state") == 0
    assert _value(m, "distillery_teacher_breaker_transitions_total", {"state": "open"}) == 1
    m.teacher_error("connection")
    m.teacher_error("not-a-known-reason")  # labels stay bounded
    m.teacher_retry()
    assert _value(m, "distillery_teacher_errors_total", {"reason": "connection"}) == 1
    assert _value(m, "distillery_teacher_errors_total", {"reason": "error"}) == 1
    assert _value(m, "distillery_teacher_errors_total", {"reason": "not-a-known-reason"}) is None
    assert _value(m, "distillery_teacher_retries_total") == 1


def test_an_open_breaker_answers_503_with_retry_after_in_whole_seconds():
    exc = TeacherCircuitOpen("teacher failing", retry_after_s=2.2)
    status, body = to_error_response(exc)
    assert status == 503 and body.error.code == "teacher_unavailable"
    assert error_headers(exc) == {"Retry-After": "3"}
    assert error_headers(TeacherCircuitOpen("x", retry_after_s=0.0)) == {"Retry-After": "1"}
    assert error_headers(TeacherConnectionError("refused")) == {}


def test_a_student_asked_for_by_name_that_cannot_answer_is_a_503_not_a_500():
    status, body = to_error_response(StudentUnavailable("the student did not answer within 10s"))
    assert status == 503 and body.error.code == "student_unavailable"


def test_the_student_breaker_is_exported_apart_from_the_teachers():
    m = GatewayMetrics()
    m.student_breaker_transition("closed", "open")
    assert _value(m, "distillery_student_breaker_state") == 2
    assert _value(m, "distillery_student_breaker_transitions_total", {"state": "open"}) == 1
    assert _value(m, "distillery_teacher_breaker_state") == 0


def test_the_student_tiers_open_breaker_answers_503_with_retry_after():
    from router.errors import StudentCircuitOpen

    exc = StudentCircuitOpen(
        "the student is failing (3 consecutive failures); retry in 4.2s", retry_after_s=4.2
    )
    status, body = to_error_response(exc)
    assert status == 503 and body.error.code == "student_unavailable"
    assert "retry in 4.2s" in body.error.message
    assert error_headers(exc) == {"Retry-After": "5"}
    assert error_headers(StudentUnavailable("x")) == {}
