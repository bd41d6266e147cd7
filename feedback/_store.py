"""The feedback store: SQLite (WAL) by default, PostgreSQL by DSN. Idempotent on request id.

Two tables of data: ``feedback_events`` (escalations, samples, audits; one row per request
id, the first write wins) and ``feedback_ratings`` (application feedback, one row per
rated answer, the latest rating wins: a user may change their mind, and a replayed older
rating never overwrites a newer one). Plus a ``schema_migrations`` table; migrations are numbered SQL
steps applied in order inside a transaction, so a store opened by a newer build upgrades
itself and an older build refuses a newer schema instead of misreading it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from feedback.errors import StoreUnavailable
from feedback.schema import EscalationEvent

__all__ = ["FeedbackStore", "PostgresStore", "SQLiteStore", "holdout_bucket", "open_store"]

SPLIT_BUCKETS = 10_000

# (version, statements); the dialect's own types are substituted for {REAL} / {TEXT}.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE feedback_events (
                request_id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                created_at {REAL} NOT NULL,
                ingested_at {REAL} NOT NULL,
                skill TEXT,
                route TEXT,
                prompt TEXT NOT NULL,
                student_answer TEXT,
                teacher_answer TEXT,
                student_confidence {REAL},
                student_version TEXT,
                teacher_version TEXT,
                split_bucket INTEGER NOT NULL,
                payload TEXT NOT NULL
            )""",
            "CREATE INDEX ix_feedback_created ON feedback_events (created_at)",
            "CREATE INDEX ix_feedback_skill ON feedback_events (skill, created_at)",
            "CREATE INDEX ix_feedback_kind ON feedback_events (kind, created_at)",
        ],
    ),
    (
        2,
        [
            """CREATE TABLE feedback_ratings (
                request_id TEXT PRIMARY KEY,
                rating {REAL} NOT NULL,
                correction TEXT,
                comment TEXT,
                tier TEXT,
                model_version TEXT,
                skill TEXT,
                prompt TEXT NOT NULL,
                created_at {REAL} NOT NULL,
                ingested_at {REAL} NOT NULL,
                split_bucket INTEGER NOT NULL,
                payload TEXT NOT NULL
            )""",
            "CREATE INDEX ix_ratings_created ON feedback_ratings (created_at)",
        ],
    ),
]
LATEST_VERSION = MIGRATIONS[-1][0]

_COLUMNS = (
    "request_id, kind, created_at, ingested_at, skill, route, prompt, student_answer, "
    "teacher_answer, student_confidence, student_version, teacher_version, split_bucket, payload"
)


def holdout_bucket(request_id: str) -> int:
    """A stable bucket in [0, 10000) from the request id: the same split on every machine."""
    return int(hashlib.sha1(request_id.encode()).hexdigest()[:8], 16) % SPLIT_BUCKETS


_RATING_COLUMNS = (
    "request_id, rating, correction, comment, tier, model_version, skill, prompt, created_at, "
    "ingested_at, split_bucket, payload"
)
_RATING_UPDATES = ("rating", "correction", "comment", "created_at", "ingested_at", "payload")
# The same statement on SQLite (>= 3.24) and PostgreSQL: a newer rating replaces the row; a
# redelivered one (same time) changes nothing and counts as a duplicate.
_RATING_UPSERT = (
    f"INSERT INTO feedback_ratings ({_RATING_COLUMNS}) VALUES ({{marks}}) "
    "ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _RATING_UPDATES)
    + " WHERE excluded.created_at > feedback_ratings.created_at"
)


def _rating_row(event: EscalationEvent, now: float) -> tuple[Any, ...]:
    version = event.teacher_version if event.tier == "teacher" else event.student_version
    return (
        event.request_id,
        event.rating,
        event.correction,
        event.comment,
        event.tier,
        version,
        event.skill,
        event.prompt_text(),
        event.created_at,
        now,
        holdout_bucket(event.request_id),
        event.model_dump_json(),
    )


def _row(event: EscalationEvent, now: float) -> tuple[Any, ...]:
    return (
        event.request_id,
        event.kind,
        event.created_at,
        now,
        event.skill,
        event.route,
        event.prompt_text(),
        event.student_answer,
        event.teacher_answer,
        event.student_confidence,
        event.student_version,
        event.teacher_version,
        holdout_bucket(event.request_id),
        event.model_dump_json(),
    )


class FeedbackStore(Protocol):
    """What the consumer writes through and the retrainer reads from."""

    def insert(self, events: Sequence[EscalationEvent]) -> int:
        """Stores events, ignoring request ids already present (a ``feedback`` event
        replaces an older rating of the same answer); returns rows added or changed."""
        ...

    def ratings(
        self,
        *,
        since: float | None = None,
        split: Literal["train", "holdout"] | None = None,
        holdout_fraction: float = 0.1,
    ) -> list[EscalationEvent]:
        """The latest ``feedback`` event of each rated answer."""
        ...

    def count(
        self, *, kind: str | None = None, skill: str | None = None, since: float | None = None
    ) -> int: ...

    def count_by_skill(self, *, since: float | None = None) -> dict[str | None, int]: ...

    def route_counts(self, *, since: float | None = None) -> dict[tuple[str | None, str | None, str], int]:
        """Escalations and samples per (student version, route label, kind): what the
        route prior (``router._prior``) learns from."""
        ...

    def events(
        self,
        *,
        since: float | None = None,
        kind: str | None = None,
        skill: str | None = None,
        split: Literal["train", "holdout"] | None = None,
        holdout_fraction: float = 0.1,
        limit: int | None = None,
        student_version: str | None = None,
    ) -> list[EscalationEvent]: ...

    def request_ids(self) -> list[str]: ...

    def close(self) -> None: ...


class _SQLStore:
    """Shared SQL; subclasses supply the connection, placeholders and upsert syntax."""

    placeholder = "?"
    real_type = "REAL"

    def _connect(self) -> Any:
        raise NotImplementedError

    def _insert_sql(self) -> str:
        raise NotImplementedError

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                cur = self._conn.cursor()
                yield cur
                self._conn.commit()
            except StoreUnavailable:
                raise
            except Exception as exc:
                self._reset()
                raise StoreUnavailable(f"feedback store error: {type(exc).__name__}: {exc}") from exc

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.rollback()
                conn.close()
            except Exception:
                pass

    def migrate(self) -> int:
        p = self.placeholder
        with self._tx() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                f"applied_at {self.real_type} NOT NULL)"
            )
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            current = int(cur.fetchone()[0])
            if current > LATEST_VERSION:
                raise StoreUnavailable(
                    f"store schema v{current} is newer than this build (v{LATEST_VERSION}); "
                    "upgrade Distillery"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for stmt in statements:
                    cur.execute(stmt.format(REAL=self.real_type))
                cur.execute(f"INSERT INTO schema_migrations VALUES ({p}, {p})", (version, time.time()))
            return LATEST_VERSION

    def insert(self, events: Sequence[EscalationEvent]) -> int:
        if not events:
            return 0
        now = time.time()
        rows = [_row(e, now) for e in events if e.kind != "feedback"]
        rated = [_rating_row(e, now) for e in events if e.kind == "feedback" and e.rating is not None]
        added = 0
        with self._tx() as cur:
            if rows:
                cur.executemany(self._insert_sql(), rows)
                # Both drivers sum rowcount over executemany; ignored conflicts count 0.
                added += max(0, int(cur.rowcount))
            if rated:
                marks = ", ".join([self.placeholder] * 12)
                cur.executemany(_RATING_UPSERT.format(marks=marks), rated)
                added += max(0, int(cur.rowcount))
        return added

    def ratings(
        self,
        *,
        since: float | None = None,
        split: Literal["train", "holdout"] | None = None,
        holdout_fraction: float = 0.1,
    ) -> list[EscalationEvent]:
        where, args = self._where(since, None, None, split, holdout_fraction)
        with self._tx() as cur:
            cur.execute(f"SELECT payload FROM feedback_ratings{where} ORDER BY created_at, request_id", args)
            return [EscalationEvent.model_validate(json.loads(r[0])) for r in cur.fetchall()]

    def _where(
        self,
        since: float | None,
        kind: str | None,
        skill: str | None,
        split: Literal["train", "holdout"] | None = None,
        holdout_fraction: float = 0.1,
        student_version: str | None = None,
    ) -> tuple[str, list[Any]]:
        p = self.placeholder
        clauses: list[str] = []
        args: list[Any] = []
        if since is not None:
            clauses.append(f"created_at >= {p}")
            args.append(since)
        if kind is not None:
            clauses.append(f"kind = {p}")
            args.append(kind)
        if skill is not None:
            clauses.append(f"skill = {p}")
            args.append(skill)
        if split is not None:
            clauses.append(f"split_bucket {'<' if split == 'holdout' else '>='} {p}")
            args.append(int(holdout_fraction * SPLIT_BUCKETS))
        if student_version is not None:
            clauses.append(f"student_version = {p}")
            args.append(student_version)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def count(self, *, kind: str | None = None, skill: str | None = None, since: float | None = None) -> int:
        where, args = self._where(since, kind, skill)
        with self._tx() as cur:
            cur.execute(f"SELECT COUNT(*) FROM feedback_events{where}", args)
            return int(cur.fetchone()[0])

    def count_by_skill(self, *, since: float | None = None) -> dict[str | None, int]:
        where, args = self._where(since, None, None)
        with self._tx() as cur:
            cur.execute(f"SELECT skill, COUNT(*) FROM feedback_events{where} GROUP BY skill", args)
            return {row[0]: int(row[1]) for row in cur.fetchall()}

    def route_counts(self, *, since: float | None = None) -> dict[tuple[str | None, str | None, str], int]:
        where, args = self._where(since, None, None)
        kinds = f"kind IN ({self.placeholder}, {self.placeholder})"
        where = f"{where} AND {kinds}" if where else f" WHERE {kinds}"
        sql = f"SELECT student_version, skill, kind, COUNT(*) FROM feedback_events{where} GROUP BY 1, 2, 3"
        with self._tx() as cur:
            cur.execute(sql, [*args, "escalation", "sample"])
            return {(row[0], row[1], str(row[2])): int(row[3]) for row in cur.fetchall()}

    def events(
        self,
        *,
        since: float | None = None,
        kind: str | None = None,
        skill: str | None = None,
        split: Literal["train", "holdout"] | None = None,
        holdout_fraction: float = 0.1,
        limit: int | None = None,
        student_version: str | None = None,
    ) -> list[EscalationEvent]:
        where, args = self._where(since, kind, skill, split, holdout_fraction, student_version)
        sql = f"SELECT payload FROM feedback_events{where} ORDER BY created_at, request_id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._tx() as cur:
            cur.execute(sql, args)
            return [EscalationEvent.model_validate(json.loads(r[0])) for r in cur.fetchall()]

    def request_ids(self) -> list[str]:
        with self._tx() as cur:
            cur.execute("SELECT request_id FROM feedback_events ORDER BY request_id")
            return [str(r[0]) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._reset()


class SQLiteStore(_SQLStore):
    """Embedded default. WAL so readers (the retrainer) never block the consumer's writes;
    ``synchronous=FULL`` because offsets are committed right after our commit returns."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        path.parent.mkdir(parents=True, exist_ok=True)
        self.migrate()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout_ms / 1000, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        return conn

    def _insert_sql(self) -> str:
        marks = ", ".join("?" * 14)
        return f"INSERT OR IGNORE INTO feedback_events ({_COLUMNS}) VALUES ({marks})"


class PostgresStore(_SQLStore):
    placeholder = "%s"
    real_type = "DOUBLE PRECISION"

    def __init__(self, dsn: str, *, connect_timeout_s: int = 5) -> None:
        super().__init__()
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self.migrate()

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self._dsn, connect_timeout=self._connect_timeout_s)

    def _insert_sql(self) -> str:
        marks = ", ".join(["%s"] * 14)
        return (
            f"INSERT INTO feedback_events ({_COLUMNS}) VALUES ({marks}) ON CONFLICT (request_id) DO NOTHING"
        )


def open_store(dsn: str) -> SQLiteStore | PostgresStore:
    """``postgresql://...`` opens PostgreSQL; ``sqlite:///path`` or a plain path, SQLite."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return PostgresStore(dsn)
    path = dsn.removeprefix("sqlite:///") if dsn.startswith("sqlite:///") else dsn
    return SQLiteStore(Path(path))
