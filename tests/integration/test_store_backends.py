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
