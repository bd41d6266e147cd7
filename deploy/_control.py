"""The control plane's state behind one interface: files for one host, PostgreSQL for many.

Everything the control plane shares between processes (the registry's pointers and audit
log, the refresh request, the loop's state and events, the refresh lease, each replica's
canary evidence) is a keyed JSON document or an append-only log. Two backends keep them:

* ``FileControlStore`` (the embedded default): one file per key under the registry
  directory, the layout it always had (``pointers.json``, ``refresh.lease``,
  ``loop_events.jsonl``, ``evidence/<replica>.json``). A write is a rename; a
  compare-and-swap holds an ``flock`` on ``.control.lock`` while it reads, compares and
  renames. Every process that shares it needs the same directory: one host, or a POSIX
  volume with working locks.
* ``PostgresControlStore`` (production): two tables in the PostgreSQL feedback database,
  keyed by a ``scope`` so several registries (staging, production, a test) share one
  database. A compare-and-swap is one conditional ``UPDATE`` on a revision counter.

The one primitive both honour is ``swap(key, expected_revision, value)``: write only when
the key is still at the revision the caller read (``None``: only when absent). Promote,
rollback, canary start and end are read-modify-write updates built on it (``update``), so
two writers (the loop promoting while an operator pins a threshold) can no longer lose one
another's change; the lease is created, renewed, taken over and released with it. Model
weights are not control state: version directories stay under the registry directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from deploy.errors import ControlStoreUnavailable, RegistryError

__all__ = [
    "ControlEntry",
    "ControlStore",
    "ControlStoreUnavailable",
    "FileControlStore",
    "PostgresControlStore",
    "open_control_store",
    "take",
    "update",
]

_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$")

FILE_NAMES = {"lease": "refresh.lease"}
"""Keys whose file names predate the store (operators' runbooks and the chaos tests name
them); every other key ``k`` is ``k.json``, a log ``l`` is ``l.jsonl``."""


@dataclass(frozen=True)
class ControlEntry:
    value: dict[str, Any]
    revision: str
    """Changes whenever the value does: what ``swap`` compares and a follower polls."""
    updated_at: float


class ControlStore(Protocol):
    def read(self, key: str) -> ControlEntry | None: ...

    def swap(self, key: str, expected: str | None, value: dict[str, Any] | None) -> bool:
        """Writes ``value`` (``None`` deletes) only if ``key`` is at revision ``expected``
        (``None``: only if absent); False, and nothing written, otherwise."""
        ...

    def put(self, key: str, value: dict[str, Any] | None) -> None:
        """Writes unconditionally (a single writer's key: loop state, a replica's evidence)."""
        ...

    def scan(self, prefix: str) -> dict[str, ControlEntry]:
        """Every key under ``prefix/``."""
        ...

    def append(self, log: str, entry: dict[str, Any]) -> None: ...

    def entries(self, log: str) -> list[dict[str, Any]]:
        """A log's entries in the order they were appended."""
        ...

    def describe(self) -> str:
        """Where the state lives, for messages."""
        ...


def _check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key:
        raise RegistryError(f"invalid control key {key!r}")
    return key


def update(
    store: ControlStore,
    key: str,
    change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    *,
    attempts: int = 100,
) -> dict[str, Any] | None:
    """Read, ``change``, compare-and-swap; again on a concurrent write. Returns the value
    written. ``change`` may run more than once and must not have side effects."""
    for _ in range(attempts):
        entry = store.read(key)
        value = change(dict(entry.value) if entry is not None else None)
        if store.swap(key, entry.revision if entry is not None else None, value):
            return value
    raise RegistryError(f"could not update {key!r} in {store.describe()}: {attempts} concurrent writes")


def take(store: ControlStore, key: str) -> dict[str, Any] | None:
    """Reads and deletes, once: of two takers, one gets the value and the other None."""
    while True:
        entry = store.read(key)
        if entry is None:
            return None
        if store.swap(key, entry.revision, None):
            return entry.value


# ---- files ------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FileControlStore:
    """One file per key under ``root``; nothing is created until something is written (a
    read-only command on a fresh checkout leaves no registry behind)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._thread_lock = threading.Lock()

    def describe(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / FILE_NAMES.get(_check_key(key), f"{key}.json")

    def log_path(self, log: str) -> Path:
        return self.root / f"{_check_key(log)}.jsonl"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Across processes (``flock``) and across this process's threads (flock is per
        open file, and each call opens its own)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(self.root / ".control.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _entry(path: Path) -> ControlEntry | None:
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None  # half-written by a tool that does not rename: treat as absent
        if not isinstance(value, dict):
            return None
        return ControlEntry(value, hashlib.sha1(raw).hexdigest(), mtime)

    def read(self, key: str) -> ControlEntry | None:
        return self._entry(self.path(key))

    def _write(self, path: Path, value: dict[str, Any] | None) -> None:
        if value is None:
            path.unlink(missing_ok=True)
        else:
            _write_atomic(path, json.dumps(value, indent=2).encode())

    def swap(self, key: str, expected: str | None, value: dict[str, Any] | None) -> bool:
        path = self.path(key)
        with self._locked():
            entry = self._entry(path)
            if (entry.revision if entry is not None else None) != expected:
                return False
            self._write(path, value)
            return True

    def put(self, key: str, value: dict[str, Any] | None) -> None:
        path = self.path(key)
        with self._locked():
            self._write(path, value)

    def scan(self, prefix: str) -> dict[str, ControlEntry]:
        folder = self.root / _check_key(prefix)
        out: dict[str, ControlEntry] = {}
        for path in folder.glob("*.json") if folder.is_dir() else []:
            entry = self._entry(path)
            if entry is not None:
                out[f"{prefix}/{path.stem}"] = entry
        return out

    def append(self, log: str, entry: dict[str, Any]) -> None:
        path = self.log_path(log)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:  # one write of one line: O_APPEND keeps lines whole
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def entries(self, log: str) -> list[dict[str, Any]]:
        path = self.log_path(log)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- PostgreSQL -------------------------------------------------------------------------
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS distillery_control (scope TEXT NOT NULL, key TEXT NOT NULL, "
    "value TEXT NOT NULL, revision BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (scope, key))",
    "CREATE TABLE IF NOT EXISTS distillery_control_log (id BIGSERIAL PRIMARY KEY, scope TEXT NOT NULL, "
    "log TEXT NOT NULL, entry TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS distillery_control_log_by_log ON distillery_control_log (scope, log, id)",
)


class PostgresControlStore:
    """Two tables in the feedback database. Revisions are a per-key counter, so a
    compare-and-swap is one statement and needs no lock held across a round trip. Values
    are stored as the JSON text written (not ``jsonb``): what is read back is exactly what
    was written, floats included."""

    def __init__(self, dsn: str, *, scope: str = "default", connect_timeout_s: int = 5) -> None:
        self._dsn = dsn
        self.scope = scope
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None
        # Two processes creating the tables at once can collide on the catalog; the loser
        # finds them there on its retry.
        for attempt in range(3):
            try:
                with self._tx() as cur:
                    for stmt in _SCHEMA:
                        cur.execute(stmt)
                break
            except ControlStoreUnavailable:
                if attempt == 2:
                    raise
                time.sleep(0.2)

    def describe(self) -> str:
        host = re.sub(r"//[^@/]*@", "//", self._dsn)  # no password in a message
        return f"{host} (scope {self.scope!r})"

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            try:
                if self._conn is None:
                    import psycopg

                    self._conn = psycopg.connect(self._dsn, connect_timeout=self._connect_timeout_s)
                cur = self._conn.cursor()
                yield cur
                self._conn.commit()
            except Exception as exc:
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                raise ControlStoreUnavailable(
                    f"control store {self.describe()}: {type(exc).__name__}: {exc}"
                ) from exc

    def read(self, key: str) -> ControlEntry | None:
        with self._tx() as cur:
            cur.execute(
                "SELECT value, revision, updated_at FROM distillery_control WHERE scope = %s AND key = %s",
                (self.scope, _check_key(key)),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return ControlEntry(json.loads(row[0]), str(row[1]), float(row[2]))

    def swap(self, key: str, expected: str | None, value: dict[str, Any] | None) -> bool:
        _check_key(key)
        now = time.time()
        with self._tx() as cur:
            if expected is None and value is not None:
                cur.execute(
                    "INSERT INTO distillery_control (scope, key, value, revision, updated_at) "
                    "VALUES (%s, %s, %s, 1, %s) ON CONFLICT (scope, key) DO NOTHING",
                    (self.scope, key, json.dumps(value), now),
                )
            elif expected is None:  # delete if absent: nothing to do, and true
                cur.execute(
                    "SELECT 1 FROM distillery_control WHERE scope = %s AND key = %s", (self.scope, key)
                )
                return cur.fetchone() is None
            elif value is None:
                cur.execute(
                    "DELETE FROM distillery_control WHERE scope = %s AND key = %s AND revision = %s",
                    (self.scope, key, int(expected)),
                )
            else:
                cur.execute(
                    "UPDATE distillery_control SET value = %s, revision = revision + 1, updated_at = %s "
                    "WHERE scope = %s AND key = %s AND revision = %s",
                    (json.dumps(value), now, self.scope, key, int(expected)),
                )
            return int(cur.rowcount) == 1

    def put(self, key: str, value: dict[str, Any] | None) -> None:
        _check_key(key)
        with self._tx() as cur:
            if value is None:
                cur.execute("DELETE FROM distillery_control WHERE scope = %s AND key = %s", (self.scope, key))
                return
            cur.execute(
                "INSERT INTO distillery_control (scope, key, value, revision, updated_at) "
                "VALUES (%s, %s, %s, 1, %s) ON CONFLICT (scope, key) DO UPDATE SET "
                "value = EXCLUDED.value, revision = distillery_control.revision + 1, "
                "updated_at = EXCLUDED.updated_at",
                (self.scope, key, json.dumps(value), time.time()),
            )

    def scan(self, prefix: str) -> dict[str, ControlEntry]:
        start = _check_key(prefix) + "/"
        with self._tx() as cur:
            cur.execute(
                "SELECT key, value, revision, updated_at FROM distillery_control "
                "WHERE scope = %s AND starts_with(key, %s)",
                (self.scope, start),
            )
            rows = cur.fetchall()
        return {
            str(k): ControlEntry(json.loads(v), str(r), float(u))
            for k, v, r, u in rows
            if "/" not in str(k)[len(start) :]
        }

    def append(self, log: str, entry: dict[str, Any]) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO distillery_control_log (scope, log, entry, created_at) VALUES (%s, %s, %s, %s)",
                (self.scope, _check_key(log), json.dumps(entry), time.time()),
            )

    def entries(self, log: str) -> list[dict[str, Any]]:
        with self._tx() as cur:
            cur.execute(
                "SELECT entry FROM distillery_control_log WHERE scope = %s AND log = %s ORDER BY id",
                (self.scope, _check_key(log)),
            )
            return [json.loads(r[0]) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


def open_control_store(registry_dir: Path, dsn: str | None = None, *, scope: str = "default") -> ControlStore:
    """``dsn`` None: files under the registry directory; ``postgresql://...``: the tables."""
    if dsn is None:
        return FileControlStore(registry_dir)
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise RegistryError(f"the control store needs a PostgreSQL DSN, got {dsn.split(':', 1)[0]!r}")
    return PostgresControlStore(dsn, scope=scope)
