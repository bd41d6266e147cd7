"""The route prior: what the store's counts make it decide, and what the cascade does with
a verdict (which tier is asked, what is recorded). Fakes only; the store's query is
tested on both real backends in ``tests/integration/test_store_backends.py``."""

import random

import pytest

from router import (
    CascadeConfig,
    CascadeRouter,
    Chunk,
    Decided,
    GenerationRequest,
    PriorConfig,
    RoutePrior,
    StreamEnd,
    StreamingCascade,
    ThresholdPolicy,
    learn_prior,
)
from router._prior import wilson_bounds
from router.errors import TeacherUnavailable
from tests.fakes.clients import FakeStreamingStudent, FakeStreamingTeacher, FakeTier, make_generation

PLURAL = GenerationRequest(prompt="What is the plural of mouse?", max_tokens=16, route="plural")
ORDER = GenerationRequest(prompt="What is the order number in 4818?", max_tokens=16, route="order")
SURE = [(t, 0.99) for t in ("The", " order", " number", " is", " 4818", ".")]
DOUBTFUL_END = [("The", 0.99), (" order", 0.99), (" number", 0.3), (" is", 0.2), (" 12", 0.1)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NeverExplore(random.Random):
    def random(self) -> float:
        return 0.99


def counts(version="s1", escalated=(("plural", 40),), served=(("order", 40),)):
    out = {(version, route, "escalation"): n for route, n in escalated}
    out.update({(version, route, "sample"): n for route, n in served})
    return out


def prior(cfg=None, table=None, seen=("s1",), rng=None):
    clock = Clock()
    p = RoutePrior(cfg or PriorConfig(), rng=rng or NeverExplore(), clock=clock)
    p.update(learn_prior(table if table is not None else counts(), 1.0, p.config))
    for v in seen:
        p.saw_version(v)
    return p, clock


# ---- learning ------------------------------------------------------------------------
def test_wilson_bounds_are_the_textbook_interval():
    lower, upper = wilson_bounds(30, 30, 1.645)
    assert lower == pytest.approx(30 / (30 + 1.645**2)) and upper == 1.0
    assert wilson_bounds(0, 0, 1.645) == (0.0, 1.0)
    lo, hi = wilson_bounds(5, 10, 1.96)
    assert lo < 0.5 < hi and lo == pytest.approx(1 - hi)


def test_a_route_the_student_always_escalates_skips_it_and_a_sure_route_streams_first_only_when_asked():
    cfg = PriorConfig(stream_from_first_at=0.1)
    table = counts(escalated=(("plural", 40), ("capital", 6)), served=(("order", 40), ("capital", 24)))
    verdicts = {e.route: e.verdict for e in learn_prior(table, 1.0, cfg)}
    assert verdicts == {"plural": "teacher", "order": "student", "capital": None}
    off = {e.route: e.verdict for e in learn_prior(table, 1.0, PriorConfig())}
    assert off["order"] is None  # streaming from the first token is the operator's call


def test_too_few_requests_or_no_samples_or_no_version_give_no_verdict():
    few = learn_prior(counts(escalated=(("plural", 10),), served=()), 1.0, PriorConfig())
    assert [e.verdict for e in few] == [None]
    unsampled = learn_prior(counts(), 0.0, PriorConfig())  # escalations alone carry no rate
    assert all(e.verdict is None for e in unsampled)
    skipped = learn_prior({(None, "plural", "escalation"): 500}, 1.0, PriorConfig())
    assert skipped == []  # the prior's own skips are not the student's escalations


def test_a_sampled_store_is_thinned_to_its_samples_so_it_is_never_surer_than_them():
    table = counts(escalated=(("plural", 30),), served=())
    assert learn_prior(table, 1.0, PriorConfig())[0].verdict == "teacher"
    thinned = learn_prior(table, 0.2, PriorConfig())[0]
    assert thinned.sampled_n == pytest.approx(6.0) and thinned.verdict is None
    mixed = learn_prior(counts(escalated=(("x", 50),), served=(("x", 40),)), 0.2, PriorConfig())[0]
    assert mixed.rate == pytest.approx(10 / 50)  # 50 escalations kept at 0.2 beside 40 samples


# ---- reading -------------------------------------------------------------------------
def test_the_student_is_skipped_only_where_every_serving_version_says_so():
    p, clock = prior()
    assert p.skip_student("plural") and not p.skip_student("order") and not p.skip_student(None)
    p.saw_version("s2")  # a canary (or a swap): no counts of its own yet
    assert not p.skip_student("plural")
    clock.now += p.config.version_ttl_s + 1
    p.saw_version("s2")
    assert not p.skip_student("plural")  # s1 gone, s2 has no verdict
    p.update(learn_prior(counts("s2"), 1.0, p.config))
    assert p.skip_student("plural")


def test_nothing_is_skipped_before_a_student_version_has_been_seen():
    p, _ = prior(seen=())
    assert not p.skip_student("plural")


def test_an_explored_share_still_takes_the_cascade_path():
    rng = random.Random(3)
    p, _ = prior(PriorConfig(explore=0.2), rng=rng)
    skipped = sum(p.skip_student("plural") for _ in range(2000))
    assert 1500 < skipped < 1700


# ---- the whole-answer cascade ------------------------------------------------------------
def router_with(p, student, teacher, **cfg):
    return CascadeRouter(
        student, teacher, ThresholdPolicy("mean_logprob", 0.9), CascadeConfig(**cfg), prior=p
    )


async def test_a_skipped_route_never_asks_the_student_and_is_an_escalation_decided_at_zero():
    student = FakeTier(lambda r: make_generation("a mouse", version="s1"))
    teacher = FakeTier(lambda r: make_generation("mice", version="t1"))
    p, _ = prior()
    result = await router_with(p, student, teacher).route(PLURAL)
    assert student.calls == [] and len(teacher.calls) == 1
    assert (result.tier, result.escalated, result.decided_at_tokens) == ("teacher", True, 0)
    assert result.decision is None and result.student_version is None  # not the student's escalation
    served = await router_with(p, student, teacher).route(ORDER)
    assert served.tier == "student" and len(student.calls) == 1


async def test_a_teacher_failure_on_a_skipped_route_falls_back_as_an_escalation_does():
    student = FakeTier(lambda r: make_generation("mice", version="s1"))
    down = FakeTier(lambda r: make_generation("x"), fail=ConnectionRefusedError("down"))
    p, _ = prior()
    kept = await router_with(
        p, student, down, teacher_failure_policy="serve_student", teacher_retries=0
    ).route(PLURAL)
    assert (kept.tier, kept.low_confidence, kept.outcome) == (
        "student",
        True,
        "teacher_failed_served_student",
    )
    with pytest.raises(TeacherUnavailable):
        await router_with(p, student, down, teacher_retries=0).route(PLURAL)


async def test_a_tier_asked_for_by_name_ignores_the_prior():
    student = FakeTier(lambda r: make_generation("a mouse", version="s1"))
    teacher = FakeTier(lambda r: make_generation("mice", version="t1"))
    p, _ = prior()
    result = await router_with(p, student, teacher).route(PLURAL, force="student")
    assert result.tier == "student" and len(student.calls) == 1 and teacher.calls == []


# ---- the streaming cascade ---------------------------------------------------------------
def streaming_with(p, student, teacher):
    unused = FakeTier(lambda r: make_generation("unused"))
    return StreamingCascade(router_with(p, unused, unused), student, teacher)


async def drain(items):
    out = [item async for item in items]
    decided = [i for i in out if isinstance(i, Decided)]
    assert len(decided) == 1 and out.index(decided[0]) == 0
    return decided[0], [i for i in out if isinstance(i, Chunk)], out[-1]


async def test_a_skipped_stream_relays_the_teacher_and_never_opens_the_student():
    student = FakeStreamingStudent(SURE, commit_tokens=4, commit_bar=0.9)
    teacher = FakeStreamingTeacher(["mi", "ce"])
    p, _ = prior()
    decided, chunks, end = await drain(streaming_with(p, student, teacher).stream(PLURAL))
    assert decided.tier == "teacher" and decided.escalated and decided.at_tokens == 0
    assert [c.text for c in chunks] == ["mi", "ce"] and {c.tier for c in chunks} == {"teacher"}
    assert student.produced == 0 and not student.closed  # never asked
    assert isinstance(end, StreamEnd) and end.decided_at == 0 and not end.student_cancelled
    assert end.result.decided_at_tokens == 0 and end.result.student_version is None


async def test_a_sure_route_streams_from_the_first_token_and_records_its_late_doubt():
    p, _ = prior(PriorConfig(stream_from_first_at=0.1))
    student = FakeStreamingStudent(DOUBTFUL_END, commit_tokens=4, commit_bar=0.9)
    items = streaming_with(p, student, FakeStreamingTeacher(["x"])).stream(ORDER)
    decided = await anext(items)
    first = await anext(items)
    assert decided.tier == "student" and first == Chunk("The", "student")
    assert student.produced == 1  # before the commit point of 4
    rest = [i async for i in items]
    end = rest[-1]
    assert end.result.tier == "student" and end.late_doubt  # it stands, and is recorded


async def test_an_escalation_on_a_prefix_still_counts_for_the_version_that_was_cancelled():
    p, _ = prior(table={})
    student = FakeStreamingStudent([("A", 0.3), (" guess", 0.4), (".", 0.9)], commit_tokens=2, commit_bar=0.9)
    _, _, end = await drain(streaming_with(p, student, FakeStreamingTeacher(["ok"])).stream(ORDER))
    assert end.student_cancelled and end.result.student is None
    assert end.result.student_version == "s1"
