"""The streaming cascade on fakes: what reaches the client, in what order, and which tier
stream is cancelled. Orders of events, never wall clocks."""

import pytest

from router import (
    CascadeConfig,
    CascadeRouter,
    Chunk,
    Decided,
    GenerationRequest,
    ResponseFormat,
    StreamBroken,
    StreamEnd,
    StreamingCascade,
    ThresholdPolicy,
)
from router.errors import TeacherUnavailable
from tests.fakes.clients import FakeStreamingStudent, FakeStreamingTeacher, FakeTier, make_generation

REQ = GenerationRequest(prompt="What is the order number in this message?", max_tokens=16)
SURE_ANSWER = [(t, 0.99) for t in ("The", " order", " number", " is", " 4818", ".")]
UNSURE_START = [("A", 0.3), (" guess", 0.4), (" maybe", 0.5), (".", 0.9)]
SURE_THEN_LOST = [("The", 0.99), (" order", 0.99), (" number", 0.3), (" is", 0.2), (" 12", 0.1), (".", 0.2)]
TEACHER = ["The order", " number is", " 4818."]


def cascade(student, teacher, threshold=0.9, **cfg):
    whole = FakeTier(lambda r: make_generation("unused"))
    router = CascadeRouter(whole, whole, ThresholdPolicy("mean_logprob", threshold), CascadeConfig(**cfg))
    return StreamingCascade(router, student, teacher), router


async def collect(items, decided=None):
    """The chunks and the end; asserts one ``Decided`` comes before any text and says
    the tier every chunk is from."""
    chunks, end = [], None
    async for item in items:
        if isinstance(item, Decided):
            assert decided is None and not chunks
            decided = item
        elif isinstance(item, Chunk):
            assert decided is not None and item.tier == decided.tier
            chunks.append(item)
        else:
            assert isinstance(item, StreamEnd) and end is None and decided is not None
            end = item
    return chunks, end


async def test_a_sure_prefix_streams_the_student_before_it_has_finished():
    student = FakeStreamingStudent(SURE_ANSWER, commit_tokens=2, commit_bar=0.9)
    streaming, _ = cascade(student, FakeStreamingTeacher(TEACHER))
    items = streaming.stream(REQ)
    decided = await anext(items)
    assert (decided.tier, decided.escalated, decided.model_version) == ("student", False, "s1")
    assert decided.confidence == pytest.approx(0.99)
    first = await anext(items)
    assert first == Chunk("The order", "student")
    assert student.produced == 2 and not student.finished  # the rest is not written yet
    chunks, end = await collect(items, decided)
    assert "".join(c.text for c in [first, *chunks]) == "The order number is 4818."
    assert {c.tier for c in chunks} == {"student"}
    assert end.result.tier == "student" and not end.result.escalated and end.decided_at == 2
    assert not end.late_doubt and student.finished


async def test_an_unsure_prefix_cancels_the_student_and_streams_only_the_teacher():
    student = FakeStreamingStudent(UNSURE_START, commit_tokens=2, commit_bar=0.9)
    teacher = FakeStreamingTeacher(TEACHER)
    streaming, router = cascade(student, teacher)
    chunks, end = await collect(streaming.stream(REQ))
    assert [c.text for c in chunks] == TEACHER and {c.tier for c in chunks} == {"teacher"}
    assert student.closed and student.produced == 2 and not student.finished  # cancelled at its decision
    assert end.result.tier == "teacher" and end.result.escalated and end.student_cancelled
    assert end.result.decision.escalate and end.decided_at == 2
    assert router.breaker.consecutive_failures == 0


async def test_without_a_commit_rule_the_answer_is_judged_whole_before_any_text_leaves():
    student = FakeStreamingStudent(SURE_ANSWER)  # a version calibrated without a commit point
    streaming, _ = cascade(student, FakeStreamingTeacher(TEACHER))
    items = streaming.stream(REQ)
    decided = await anext(items)
    first = await anext(items)
    assert student.finished and first == Chunk("The order number is 4818.", "student")
    _, end = await collect(items, decided)
    assert end.decided_at is None and end.result.tier == "student"


async def test_an_answer_shorter_than_its_commit_point_escalates_on_its_whole_score():
    student = FakeStreamingStudent([("No", 0.4), (".", 0.5)], commit_tokens=4, commit_bar=0.1)
    streaming, _ = cascade(student, FakeStreamingTeacher(TEACHER))
    chunks, end = await collect(streaming.stream(REQ))
    assert {c.tier for c in chunks} == {"teacher"} and student.finished and not student.closed
    assert end.result.escalated and end.result.student is not None and end.decided_at is None


async def test_a_committed_answer_that_loses_confidence_stands_and_is_recorded_as_a_late_doubt():
    student = FakeStreamingStudent(SURE_THEN_LOST, commit_tokens=2, commit_bar=0.9)
    teacher = FakeStreamingTeacher(TEACHER)
    streaming, _ = cascade(student, teacher)
    chunks, end = await collect(streaming.stream(REQ))
    assert {c.tier for c in chunks} == {"student"} and teacher.calls == 0  # never retracted
    assert end.late_doubt and end.result.tier == "student" and not end.result.escalated


async def test_a_student_that_fails_before_deciding_escalates_and_after_committing_breaks_the_stream():
    failing = FakeStreamingStudent(SURE_ANSWER, commit_tokens=3, commit_bar=0.9, fail_at=1)
    streaming, _ = cascade(failing, FakeStreamingTeacher(TEACHER))
    chunks, end = await collect(streaming.stream(REQ))
    assert {c.tier for c in chunks} == {"teacher"} and end.result.outcome == "student_failed"

    late = FakeStreamingStudent(SURE_ANSWER, commit_tokens=2, commit_bar=0.9, fail_at=4)
    streaming, _ = cascade(late, FakeStreamingTeacher(TEACHER))
    seen = []
    with pytest.raises(StreamBroken) as broken:
        async for item in streaming.stream(REQ):
            seen.append(item)
    assert broken.value.tier == "student" and isinstance(seen[0], Decided)
    assert [c.text for c in seen[1:]] == ["The order", " number", " is"]


async def test_a_teacher_failing_before_its_first_piece_falls_back_to_the_students_answer():
    student = FakeStreamingStudent(UNSURE_START, commit_tokens=2, commit_bar=0.9)
    teacher = FakeStreamingTeacher(TEACHER, fail_first=99)
    streaming, _ = cascade(
        student, teacher, teacher_retries=1, teacher_backoff_s=0.0, teacher_failure_policy="serve_student"
    )
    chunks, end = await collect(streaming.stream(REQ))
    assert teacher.calls == 2  # retried once before giving up
    assert [c.text for c in chunks] == ["A guess maybe."] and chunks[0].tier == "student"
    assert student.whole_calls == 1  # its stream was cancelled: asked again for the whole answer
    assert end.result.outcome == "teacher_failed_served_student" and end.result.low_confidence

    strict = FakeStreamingStudent(UNSURE_START, commit_tokens=2, commit_bar=0.9)
    failing = FakeStreamingTeacher(TEACHER, fail_first=99)
    streaming, _ = cascade(strict, failing, teacher_failure_policy="error")
    with pytest.raises(TeacherUnavailable):
        await collect(streaming.stream(REQ))


async def test_a_teacher_failing_mid_answer_ends_the_stream_with_an_error_and_counts_against_it():
    teacher = FakeStreamingTeacher(TEACHER, fail_after=2)
    student = FakeStreamingStudent(UNSURE_START, commit_tokens=1, commit_bar=0.9)
    streaming, router = cascade(student, teacher)
    seen = []
    with pytest.raises(StreamBroken) as broken:
        async for item in streaming.stream(REQ):
            seen.append(item)
    assert broken.value.tier == "teacher" and isinstance(seen[0], Decided)
    assert [c.text for c in seen[1:]] == TEACHER[:2]
    assert router.breaker.consecutive_failures == 1


async def test_a_client_that_goes_away_closes_the_teachers_stream_without_blaming_the_teacher():
    teacher = FakeStreamingTeacher(TEACHER)
    student = FakeStreamingStudent(UNSURE_START, commit_tokens=1, commit_bar=0.9)
    streaming, router = cascade(student, teacher, breaker_failure_threshold=1)
    items = streaming.stream(REQ)
    decided = await anext(items)
    assert (decided.tier, decided.escalated, decided.model_version) == ("teacher", True, "t1")
    assert (await anext(items)).tier == "teacher"
    await items.aclose()
    assert teacher.closed and teacher.sent == 1
    assert router.breaker.state == "closed" and router.breaker.consecutive_failures == 0


async def test_a_client_that_goes_away_mid_student_answer_cancels_the_students_generation():
    student = FakeStreamingStudent(SURE_ANSWER, commit_tokens=1, commit_bar=0.9)
    streaming, _ = cascade(student, FakeStreamingTeacher(TEACHER))
    items = streaming.stream(REQ)
    assert isinstance(await anext(items), Decided)
    await anext(items)
    await anext(items)
    await items.aclose()
    assert student.closed and student.produced == 2 and not student.finished


async def test_a_structured_request_is_judged_whole_and_an_invalid_answer_escalates_however_sure():
    schema = '{"type": "object", "properties": {"n": {"type": "string"}}, "required": ["n"]}'
    shape = ResponseFormat(type="json_schema", schema_text=schema)
    req = GenerationRequest(prompt="order number as JSON", max_tokens=16, response_format=shape)
    good = FakeStreamingStudent([('{"n": ', 0.99), ('"4818"}', 0.99)], commit_tokens=1, commit_bar=0.0)
    streaming, _ = cascade(good, FakeStreamingTeacher(['{"n": "4818"}']))
    chunks, end = await collect(streaming.stream(req))
    assert chunks == [] and good.finished and end.result.tier == "student" and end.decided_at is None
    assert end.result.generation.text == '{"n": "4818"}'

    broken = FakeStreamingStudent([('{"n": ', 0.99), ("4818", 0.99)], commit_tokens=1, commit_bar=0.0)
    streaming, _ = cascade(broken, FakeStreamingTeacher(['{"n": "4818"}']))
    _, end = await collect(streaming.stream(req))
    assert end.result.tier == "teacher" and end.result.decision.invalid is not None


async def test_the_teacher_asked_for_by_name_streams_without_the_student():
    student = FakeStreamingStudent(SURE_ANSWER, commit_tokens=1, commit_bar=0.0)
    streaming, _ = cascade(student, FakeStreamingTeacher(TEACHER))
    chunks, end = await collect(streaming.stream(REQ, force="teacher"))
    assert [c.text for c in chunks] == TEACHER and student.produced == 0
    assert end.result.tier == "teacher" and not end.result.escalated and end.result.decision is None


async def test_text_a_delta_held_back_is_flushed_from_the_whole_answer():
    """A character split across tokens reaches the client from the whole answer's text."""
    student = FakeStreamingStudent([("caf", 0.99), ("", 0.99), ("", 0.99)], commit_tokens=1, commit_bar=0.5)
    student.whole = lambda: make_generation("café!", 0.99, "s1")  # type: ignore[method-assign]
    streaming, _ = cascade(student, FakeStreamingTeacher(TEACHER))
    chunks, end = await collect(streaming.stream(REQ))
    assert "".join(c.text for c in chunks) == "café!" == end.result.generation.text


async def test_a_failing_student_tier_streams_the_teacher_without_asking_the_student():
    failing = FakeStreamingStudent(SURE_ANSWER, commit_tokens=3, commit_bar=0.9, fail_at=0)
    teacher = FakeStreamingTeacher(TEACHER)
    streaming, router = cascade(failing, teacher, student_breaker_failure_threshold=2)
    for _ in range(2):
        _, end = await collect(streaming.stream(REQ))
        assert end.result.outcome == "student_failed"
    assert router.student_breaker.state == "open" and failing.streams == 2
    chunks, end = await collect(streaming.stream(REQ))
    assert {c.tier for c in chunks} == {"teacher"} and end.result.outcome == "student_failed"
    assert failing.streams == 2 and teacher.calls == 3
