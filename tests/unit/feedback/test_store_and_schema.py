import sqlite3

import pytest

from feedback import EscalationEvent, SQLiteStore, StoreUnavailable, holdout_bucket, open_store
from feedback._store import LATEST_VERSION


def _event(i, skill="shift", kind="escalation", t=1000.0):
    return EscalationEvent(
        request_id=f"r{i}",
        kind=kind,
        created_at=t + i,
        prompt=f"{skill}: abc =",
        student_answer="abc",
        teacher_answer="bcd",
        skill=skill,
    )


def test_wire_round_trip_and_forward_compatibility():
    event = _event(1)
    assert EscalationEvent.from_wire(event.to_wire()) == event
    newer = event.model_dump() | {"new_field": 1}
    assert EscalationEvent.model_validate(newer) == event  # unknown fields are ignored
    with pytest.raises(ValueError):
        EscalationEvent.from_wire(b'{"schema_version": 99, "request_id": "x"}')
    with pytest.raises(ValueError):
        EscalationEvent.from_wire(b"not json")


def test_insert_is_idempotent_on_request_id(tmp_path):
    store = SQLiteStore(tmp_path / "f.db")
    assert store.insert([_event(i) for i in range(10)]) == 10
    assert store.insert([_event(i) for i in range(5, 15)]) == 5
    assert store.count() == 15
    assert store.request_ids() == sorted(f"r{i}" for i in range(15))


def test_query_helpers(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'f.db'}")
    store.insert([_event(i, "shift") for i in range(6)] + [_event(i + 6, "double") for i in range(4)])
    store.insert([_event(100, "upper", kind="sample")])
    assert store.count(skill="shift") == 6
    assert store.count(kind="sample") == 1
    assert store.count(since=1005.0) == 6
    assert store.count_by_skill() == {"shift": 6, "double": 4, "upper": 1}
    since = store.events(since=1008.0, kind="escalation")
    assert [e.request_id for e in since] == ["r8", "r9"]
    assert store.events(limit=3)[0].request_id == "r0"


def test_split_is_stable_disjoint_and_complete(tmp_path):
    store = SQLiteStore(tmp_path / "f.db")
    store.insert([_event(i) for i in range(400)])
    train = {e.request_id for e in store.events(split="train", holdout_fraction=0.2)}
    holdout = {e.request_id for e in store.events(split="holdout", holdout_fraction=0.2)}
    assert train.isdisjoint(holdout) and len(train | holdout) == 400
    assert 40 <= len(holdout) <= 120
    assert holdout_bucket("r1") == holdout_bucket("r1")
    again = {
        e.request_id for e in SQLiteStore(tmp_path / "f.db").events(split="holdout", holdout_fraction=0.2)
    }
    assert again == holdout


def test_migrations_are_versioned_and_refuse_a_newer_schema(tmp_path):
    path = tmp_path / "f.db"
    SQLiteStore(path)
    SQLiteStore(path)  # re-opening applies nothing twice
    conn = sqlite3.connect(path)
    applied = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert applied[-1] == (LATEST_VERSION,) and len(applied) == LATEST_VERSION
    conn.execute("INSERT INTO schema_migrations VALUES (999, 0)")
    conn.commit()
    with pytest.raises(StoreUnavailable, match="newer"):
        SQLiteStore(path)


def test_a_version_1_store_is_upgraded_in_place_keeping_its_events(tmp_path):
    from feedback._store import MIGRATIONS

    path = tmp_path / "f.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    for stmt in MIGRATIONS[0][1]:
        conn.execute(stmt.format(REAL="REAL"))
    conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    store.insert([_event(1)])
    assert store.count() == 1 and store.ratings() == []
    versions = sqlite3.connect(path).execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert versions == [(1,), (2,)] == [(v,) for v, _ in MIGRATIONS]


def test_locked_database_is_store_unavailable_then_recovers(tmp_path):
    path = tmp_path / "f.db"
    store = SQLiteStore(path, busy_timeout_ms=50)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreUnavailable):
        store.insert([_event(1)])
    blocker.execute("ROLLBACK")
    assert store.insert([_event(1)]) == 1
