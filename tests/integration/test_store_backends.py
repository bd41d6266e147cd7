"""The store contract on both real backends: SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import pytest

from feedback import EscalationEvent, StoreUnavailable, open_store
from feedback._store import PostgresStore

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store(str(tmp_path / "f.db"))
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        s = open_store(dsn)
        with s._tx() as cur:  # each test starts from an empty table
            cur.execute("DELETE FROM feedback_events")
            cur.execute("DELETE FROM feedback_ratings")
    yield s
    s.close()


def _event(i: int, skill: str = "shift", t: float = 1000.0) -> EscalationEvent:
    return EscalationEvent(
        request_id=f"r{i}",
        created_at=t + i,
        prompt=f"{skill}: abc =",
        student_answer="abc",
        teacher_answer="bcd",
        skill=skill,
    )


def test_idempotent_insert(store):
    assert store.insert([_event(i) for i in range(50)]) == 50
    assert store.insert([_event(i) for i in range(25, 75)]) == 25
    assert store.count() == 75


def test_queries_and_split(store):
    store.insert([_event(i, "shift") for i in range(30)] + [_event(i + 30, "double") for i in range(20)])
    assert store.count_by_skill() == {"shift": 30, "double": 20}
    assert store.count(skill="double", since=1040.0) == 10
    train = {e.request_id for e in store.events(split="train", holdout_fraction=0.3)}
    holdout = {e.request_id for e in store.events(split="holdout", holdout_fraction=0.3)}
    assert train.isdisjoint(holdout) and len(train | holdout) == 50
    assert store.events(limit=1)[0] == _event(0)


def test_events_of_one_student_version(store):
    """What served replay reads: the samples one version served, not every version's (a
    store that outlives many refreshes would hand the refresh all of them)."""
    rows = [
        EscalationEvent(
            request_id=f"{version}-{i}",
            kind="sample",
            created_at=1000.0 + i,
            prompt=f"p{i}",
            student_version=version,
        )
        for version in ("s1", "s2")
        for i in range(20)
    ]
    rows.append(EscalationEvent(request_id="e", created_at=1000.0, prompt="p", student_version="s2"))
    store.insert(rows)
    got = store.events(kind="sample", student_version="s2")
    assert {e.request_id for e in got} == {f"s2-{i}" for i in range(20)}
    train = store.events(kind="sample", student_version="s2", split="train", holdout_fraction=0.3)
    assert train and {e.student_version for e in train} == {"s2"} and len(train) < 20
    assert store.events(student_version="s3") == []


def test_route_counts_are_per_student_version_route_and_kind_in_the_window(store):
    """What the route prior learns from: escalations and samples only, audits and ratings
    not; an escalation whose student was never asked (no version) keeps its None."""
    rows = [
        EscalationEvent(
            request_id=f"e{i}", created_at=1000.0 + i, prompt="p", skill="plural", student_version="s1"
        )
        for i in range(5)
    ]
    rows += [
        EscalationEvent(
            request_id=f"s{i}",
            kind="sample",
            created_at=1010.0 + i,
            prompt="p",
            skill="order",
            student_version="s1",
        )
        for i in range(3)
    ]
    rows.append(EscalationEvent(request_id="skip", created_at=1020.0, prompt="p", skill="plural"))
    rows.append(EscalationEvent(request_id="a", kind="audit", created_at=1021.0, prompt="p", skill="order"))
    store.insert(rows)
    assert store.route_counts() == {
        ("s1", "plural", "escalation"): 5,
        ("s1", "order", "sample"): 3,
        (None, "plural", "escalation"): 1,
    }
    assert store.route_counts(since=1004.0) == {
        ("s1", "plural", "escalation"): 1,
        ("s1", "order", "sample"): 3,
        (None, "plural", "escalation"): 1,
    }


def test_postgres_outage_is_store_unavailable_then_recovers(postgres_server):
    store = PostgresStore(postgres_server.dsn)
    postgres_server.stop()
    try:
        with pytest.raises(StoreUnavailable):
            store.insert([_event(9001)])
    finally:
        postgres_server.start()
    assert store.insert([_event(9001)]) in (0, 1)
    assert "r9001" in store.request_ids()


def _rating(request_id: str, rating: float, t: float, correction: str | None = None) -> EscalationEvent:
    return EscalationEvent(
        kind="feedback",
        request_id=request_id,
        created_at=t,
        prompt="shift: abc =",
        student_answer="abd",
        tier="student",
        student_version="s1",
        rating=rating,
        correction=correction,
        comment="from the app",
    )


def test_ratings_latest_wins_repeats_change_nothing_and_events_are_apart(store):
    store.insert([_event(1)])
    assert store.insert([_rating("r1", 0.0, 2000.0, correction="bcd")]) == 1
    assert store.insert([_rating("r1", 0.0, 2000.0, correction="bcd")]) == 0  # redelivered
    assert store.insert([_rating("r1", 1.0, 1999.0)]) == 0  # an older rating arriving late
    (only,) = store.ratings()
    assert (only.rating, only.correction, only.comment) == (0.0, "bcd", "from the app")
    assert store.insert([_rating("r1", 1.0, 2001.0)]) == 1  # the user changed their mind
    (only,) = store.ratings()
    assert only.rating == 1.0 and only.correction is None
    assert store.count() == 1 and store.events()[0].kind == "escalation"  # events untouched
    assert store.ratings(since=2002.0) == []
    split = {e.request_id for e in store.ratings(split="holdout", holdout_fraction=0.5)}
    split |= {e.request_id for e in store.ratings(split="train", holdout_fraction=0.5)}
    assert split == {"r1"}
