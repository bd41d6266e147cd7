import asyncio

import pytest

from router import CascadeConfig, CascadeRouter, GenerationRequest, ThresholdPolicy
from router.errors import PromptTooLong, StudentUnavailable, TeacherTimeout, TeacherUnavailable
from tests.fakes.clients import FakeTier, make_generation

REQ = GenerationRequest(prompt="reverse: abc =", max_tokens=8)


def _router(student_prob=0.999, teacher=None, student=None, **cfg):
    student = student or FakeTier(lambda r: make_generation("cba", student_prob, "s1"))
    teacher = teacher or FakeTier(lambda r: make_generation("CBA", 0.99, "t1"))
    return (
        CascadeRouter(student, teacher, ThresholdPolicy("mean_logprob", 0.95), CascadeConfig(**cfg)),
        student,
        teacher,
    )


async def test_confident_student_answers_without_calling_teacher():
    router, _, teacher = _router(0.999)
    result = await router.route(REQ)
    assert result.tier == "student"
    assert result.generation.text == "cba"
    assert not result.escalated
    assert teacher.calls == []


async def test_unconfident_student_escalates_and_keeps_its_answer_for_feedback():
    router, _, teacher = _router(0.6)
    result = await router.route(REQ)
    assert result.tier == "teacher"
    assert result.escalated
    assert result.generation.text == "CBA"
    assert result.student is not None and result.student.text == "cba"
    assert result.decision is not None and result.decision.confidence == pytest.approx(0.6)
    assert len(teacher.calls) == 1


async def test_teacher_timeout_is_a_typed_error_within_the_bound():
    slow = FakeTier(lambda r: make_generation("x"), delay_s=5.0)
    router, _, _ = _router(0.5, teacher=slow, teacher_timeout_s=0.05)
    with pytest.raises(TeacherTimeout):
        await asyncio.wait_for(router.route(REQ), timeout=2.0)


async def test_teacher_down_serves_student_marked_low_confidence_when_policy_says_so():
    down = FakeTier(lambda r: make_generation("x"), fail=ConnectionError("refused"))
    router, _, _ = _router(0.5, teacher=down, teacher_failure_policy="serve_student")
    result = await router.route(REQ)
    assert result.tier == "student"
    assert result.low_confidence
    assert result.escalated
    assert result.outcome == "teacher_failed_served_student"


async def test_teacher_down_raises_under_error_policy():
    down = FakeTier(lambda r: make_generation("x"), fail=ConnectionError("refused"))
    router, _, _ = _router(0.5, teacher=down)
    with pytest.raises(TeacherUnavailable):
        await router.route(REQ)


async def test_student_failure_falls_back_to_teacher():
    broken = FakeTier(lambda r: make_generation("x"), fail=RuntimeError("replica died"))
    router, _, teacher = _router(student=broken)
    result = await router.route(REQ)
    assert result.tier == "teacher"
    assert result.outcome == "student_failed"
    assert len(teacher.calls) == 1


async def test_a_student_past_its_deadline_escalates_to_the_teacher():
    stalled = FakeTier(lambda r: make_generation("cba"), delay_s=5.0)
    router, _, teacher = _router(student=stalled, student_timeout_s=0.05)
    result = await asyncio.wait_for(router.route(REQ), timeout=2.0)
    assert result.tier == "teacher"
    assert result.outcome == "student_failed"
    assert len(teacher.calls) == 1


async def test_the_student_asked_for_by_name_fails_as_student_unavailable():
    stalled = FakeTier(lambda r: make_generation("cba"), delay_s=5.0)
    router, _, teacher = _router(student=stalled, student_timeout_s=0.05)
    with pytest.raises(StudentUnavailable, match=r"within 0\.05s"):
        await asyncio.wait_for(router.route(REQ, force="student"), timeout=2.0)
    assert teacher.calls == []
    broken = FakeTier(lambda r: make_generation("x"), fail=RuntimeError("replica died"))
    router, _, teacher = _router(student=broken)
    with pytest.raises(StudentUnavailable, match="replica died"):
        await router.route(REQ, force="student")
    assert teacher.calls == []


async def test_invalid_request_is_never_escalated():
    strict = FakeTier(lambda r: make_generation("x"), max_prompt_chars=3)
    router, _, teacher = _router(student=strict)
    with pytest.raises(PromptTooLong):
        await router.route(REQ)
    assert teacher.calls == []


async def test_forced_tiers():
    router, student, teacher = _router(0.1)
    forced_student = await router.route(REQ, force="student")
    assert forced_student.tier == "student" and not forced_student.escalated
    forced_teacher = await router.route(REQ, force="teacher")
    assert forced_teacher.tier == "teacher" and forced_teacher.decision is None
    assert len(student.calls) == 1 and len(teacher.calls) == 1


@pytest.mark.parametrize(
    ("stamp", "pinned", "tier"),
    [
        # calibrated 0.5 keeps a 0.9-confident answer; the base policy (0.95) would not
        ({"calibrated_threshold": 0.5, "calibrated_scorer": "mean_logprob"}, None, "student"),
        # calibrated for another scorer: ignored, the base policy applies
        ({"calibrated_threshold": 0.5, "calibrated_scorer": "min_logprob"}, None, "teacher"),
        # a threshold pinned in config beats the calibrated one
        ({"calibrated_threshold": 0.5, "calibrated_scorer": "mean_logprob"}, 0.99, "teacher"),
        # the operator's live override beats the pin
        (
            {"calibrated_threshold": 0.99, "calibrated_scorer": "mean_logprob", "threshold_override": 0.5},
            0.99,
            "student",
        ),
    ],
)
async def test_threshold_precedence_override_then_pinned_then_calibrated(stamp, pinned, tier):
    student = FakeTier(lambda r: make_generation("cba", 0.9, "s1").model_copy(update=stamp))
    router, _, teacher = _router(student=student, threshold=pinned)
    assert (await router.route(REQ)).tier == tier
    assert len(teacher.calls) == (tier == "teacher")


async def test_an_empty_student_answer_escalates_however_confident():
    router, _, teacher = _router(student=FakeTier(lambda r: make_generation("", 0.99999)))
    result = await router.route(REQ)
    assert result.tier == "teacher" and result.escalated and len(teacher.calls) == 1
    assert result.decision is not None and result.decision.confidence == 0.0


async def test_each_student_version_is_judged_by_its_own_calibrated_threshold():
    def answer(r):
        gen = make_generation("cba", 0.9, "s2")
        return gen.model_copy(update={"calibrated_threshold": 0.8, "calibrated_scorer": "mean_logprob"})

    router, _, _ = _router(student=FakeTier(answer))  # configured fallback policy: 0.95
    result = await router.route(REQ)
    assert result.tier == "student" and result.threshold == 0.8
    pinned, _, _ = _router(student=FakeTier(answer), threshold=0.95)  # a pinned threshold wins
    assert (await pinned.route(REQ)).tier == "teacher"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _breaker_router(student: FakeTier, clock: _Clock) -> tuple[CascadeRouter, FakeTier]:
    teacher = FakeTier(lambda r: make_generation("CBA", 0.99, "t1"))
    config = CascadeConfig(student_breaker_failure_threshold=3, student_breaker_cooldown_s=5.0)
    policy = ThresholdPolicy("mean_logprob", 0.95)
    return CascadeRouter(student, teacher, policy, config, breaker_clock=clock), teacher


async def test_a_failing_student_tier_is_skipped_until_its_probe_then_asked_again():
    """A student node lost: after 3 failures in a row requests go straight to the teacher
    (no student_timeout_s wait each), a request for the student by name is refused at once,
    and after the cooldown one probe finds the student back."""
    clock = _Clock()
    student = FakeTier(lambda r: make_generation("cba", 0.999, "s1"), fail=RuntimeError("node lost"))
    router, teacher = _breaker_router(student, clock)
    for _ in range(3):
        assert (await router.route(REQ)).outcome == "student_failed"
    assert len(student.calls) == 3 and router.student_breaker.state == "open"
    skipped = await router.route(REQ)
    assert (skipped.tier, skipped.outcome, skipped.escalated) == ("teacher", "student_failed", True)
    assert len(student.calls) == 3 and len(teacher.calls) == 4  # the student was not asked
    with pytest.raises(StudentUnavailable, match=r"retry in 5\.0s"):
        await router.route(REQ, force="student")
    assert len(student.calls) == 3

    clock.now = 5.0
    student.fail = None  # the node is back
    probed = await router.route(REQ)
    assert probed.tier == "student" and len(student.calls) == 4
    assert router.student_breaker.state == "closed"


async def test_bad_requests_and_cancelled_probes_never_open_the_student_breaker():
    clock = _Clock()
    strict = FakeTier(lambda r: make_generation("cba", 0.999, "s1"), max_prompt_chars=3)
    router, _ = _breaker_router(strict, clock)
    for _ in range(5):
        with pytest.raises(PromptTooLong):
            await router.route(REQ)
    assert router.student_breaker.state == "closed"

    broken = FakeTier(lambda r: make_generation("cba", 0.999, "s1"), fail=RuntimeError("node lost"))
    router, _ = _breaker_router(broken, clock)
    for _ in range(3):
        await router.route(REQ)
    clock.now += 5.0
    broken.fail, broken.delay_s = None, 10.0
    probe = asyncio.create_task(router.route(REQ))  # the half-open probe ...
    await asyncio.sleep(0.01)
    probe.cancel()  # ... whose client went away: no verdict, the slot is free again
    with pytest.raises(asyncio.CancelledError):
        await probe
    broken.delay_s = 0.0
    assert (await router.route(REQ)).tier == "student"
    assert router.student_breaker.state == "closed"
