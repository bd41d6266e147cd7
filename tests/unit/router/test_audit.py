"""Shadow audits: sampled off the hot path, capped, bounded, every drop counted."""

import asyncio
import dataclasses
import random

import pytest

from router import (
    AuditConfig,
    AuditVerdict,
    CascadeConfig,
    CascadeRouter,
    GenerationRequest,
    ShadowAuditor,
    ThresholdPolicy,
)
from tests.fakes.clients import FakeTier, make_generation

GREEDY = GenerationRequest(prompt="reverse: abc =", max_tokens=8, request_id="r-1")


class Report:
    def __init__(self) -> None:
        self.verdicts: list[AuditVerdict] = []
        self.dropped: list[str] = []

    def audit_verdict(self, verdict: AuditVerdict) -> None:
        self.verdicts.append(verdict)

    def audit_dropped(self, reason: str) -> None:
        self.dropped.append(reason)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _served(prob: float = 0.999, request: GenerationRequest = GREEDY, version: str = "s1"):
    student = FakeTier(lambda r: make_generation("cba", prob, version))
    teacher = FakeTier(lambda r: make_generation("cba", 0.99, "t1"))
    router = CascadeRouter(student, teacher, ThresholdPolicy("mean_logprob", 0.95), CascadeConfig())
    return await router.route(request)


def _auditor(teacher: FakeTier, report: Report, clock: Clock | None = None, **cfg: float):
    config = AuditConfig(**{"share": 1.0, "canary_share": 1.0, **cfg})
    return ShadowAuditor(
        teacher,
        lambda a, b: a.strip() == b.strip(),
        config,
        report,
        rng=random.Random(0),
        clock=clock or Clock(),
    )


async def test_offer_never_waits_for_the_teacher_and_a_disagreement_is_reported():
    teacher = FakeTier(lambda r: make_generation("xyz", 0.99, "t1"), delay_s=0.05)
    report = Report()
    auditor = _auditor(teacher, report)
    result = await _served()
    assert auditor.offer(GREEDY, result) is True
    assert teacher.calls == []  # queued: the call happens in a worker, later
    await auditor.join()
    assert len(teacher.calls) == 1 and teacher.calls[0].temperature == 0.0
    (verdict,) = report.verdicts
    assert not verdict.agreed and verdict.student.text == "cba" and verdict.teacher.text == "xyz"
    await auditor.close()


async def test_agreement_is_reported_as_agreed():
    teacher = FakeTier(lambda r: make_generation("cba", 0.99, "t1"))
    report = Report()
    auditor = _auditor(teacher, report)
    auditor.offer(GREEDY, await _served())
    await auditor.join()
    assert [v.agreed for v in report.verdicts] == [True]
    await auditor.close()


async def test_only_confident_greedy_student_answers_are_audited():
    teacher = FakeTier(lambda r: make_generation("cba", 0.99, "t1"))
    auditor = _auditor(teacher, Report())
    escalated = await _served(prob=0.5)
    assert escalated.tier == "teacher"
    assert auditor.offer(GREEDY, escalated) is False
    sampled = GREEDY.model_copy(update={"temperature": 0.8})
    assert auditor.offer(sampled, await _served(request=sampled)) is False
    await auditor.close()


async def test_the_cap_holds_whatever_the_traffic_and_drops_are_counted():
    teacher = FakeTier(lambda r: make_generation("cba", 0.99, "t1"))
    report = Report()
    clock = Clock()
    auditor = _auditor(teacher, report, clock, max_per_s=2.0, burst=4, queue_size=100)
    result = await _served()
    for _ in range(100):  # a burst of 100 answers in one instant
        auditor.offer(GREEDY, result)
    await auditor.join()
    assert len(teacher.calls) == 4 and report.dropped.count("rate_limited") == 96
    for _ in range(20):  # then 10 s of 10 answers a second
        clock.now += 0.5
        for _ in range(5):
            auditor.offer(GREEDY, result)
    await auditor.join()
    assert len(teacher.calls) == 4 + 20  # 2 calls a second, not one more
    assert len(report.verdicts) == len(teacher.calls)
    assert len(report.dropped) + len(teacher.calls) == 200
    await auditor.close()


async def test_a_full_queue_drops_and_counts_instead_of_growing():
    gate = asyncio.Event()

    class Stalled(FakeTier):
        async def generate(self, request):
            self.calls.append(request)
            await gate.wait()
            return make_generation("cba", 0.99, "t1")

    teacher = Stalled(lambda r: make_generation("cba"))
    report = Report()
    auditor = _auditor(teacher, report, max_per_s=1000.0, burst=1000, queue_size=3, concurrency=1)
    result = await _served()
    for _ in range(10):
        auditor.offer(GREEDY, result)
    # Offered in one go (no await between): three fit, seven are dropped.
    assert auditor.queued == 3 and report.dropped == ["queue_full"] * 7
    gate.set()
    await auditor.join()
    assert len(report.verdicts) + len(report.dropped) == 10
    await auditor.close()


async def test_shares_current_versus_canary():
    teacher = FakeTier(lambda r: make_generation("cba", 0.99, "t1"))
    auditor = _auditor(teacher, Report(), share=0.0, canary_share=1.0, max_per_s=1000.0, burst=1000)
    current = await _served()
    canary = dataclasses.replace(current, generation=current.generation.model_copy(update={"canary": True}))
    assert auditor.offer(GREEDY, current) is False
    assert auditor.offer(GREEDY, canary) is True
    await auditor.join()
    await auditor.close()


@pytest.mark.parametrize(
    ("available", "fail", "reason"),
    [(False, None, "teacher_unavailable"), (True, RuntimeError("boom"), "teacher_error")],
)
async def test_teacher_trouble_drops_the_audit_counted(available, fail, reason):
    teacher = FakeTier(lambda r: make_generation("cba", 0.99, "t1"), fail=fail)
    report = Report()
    auditor = ShadowAuditor(
        teacher,
        lambda a, b: a == b,
        AuditConfig(share=1.0),
        report,
        teacher_available=lambda: available,
        rng=random.Random(0),
    )
    auditor.offer(GREEDY, await _served())
    await auditor.join()
    assert report.dropped == [reason] and report.verdicts == []
    assert len(teacher.calls) == (1 if available else 0)
    await auditor.close()


async def test_close_drops_what_is_still_queued_and_refuses_new_offers():
    teacher = FakeTier(lambda r: make_generation("cba", 0.99, "t1"))
    report = Report()
    auditor = _auditor(teacher, report, max_per_s=1000.0, burst=1000)
    result = await _served()
    for _ in range(5):
        auditor.offer(GREEDY, result)
    await auditor.close()
    assert auditor.offer(GREEDY, result) is False
    assert len(report.verdicts) + len(report.dropped) == 6
    assert report.dropped[-1] == "closed"


async def test_a_structured_answer_is_audited_structurally():
    from router._types import ResponseFormat

    request = GenerationRequest(
        prompt="as JSON:",
        max_tokens=16,
        request_id="r-json",
        response_format=ResponseFormat(type="json_object"),
    )
    student = FakeTier(lambda r: make_generation('{"b": 2, "a": 1}', 0.999, "s1"))
    router = CascadeRouter(
        student,
        FakeTier(lambda r: make_generation("-", 0.99)),
        ThresholdPolicy("mean_logprob", 0.95),
        CascadeConfig(),
    )
    served = await router.route(request)
    assert served.tier == "student"
    verdicts = []
    for answer in ('{"a":1,"b":2}', '{"a": 1, "b": 3}'):
        report = Report()
        teacher = make_generation(answer, 0.99, "t1")
        auditor = _auditor(FakeTier(lambda r: teacher), report)  # noqa: B023 (awaited in this turn)
        assert auditor.offer(request, served)
        await auditor.join()
        verdicts.append(report.verdicts[0].agreed)
        await auditor.close()
    # The same object in another key order agrees (the text metric would call it a miss).
    assert verdicts == [True, False]
