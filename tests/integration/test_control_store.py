"""The control store contract on both backends (files under a registry, the PostgreSQL
tables), and the control plane built on it (registry pointers, refresh requests, the lease,
canary evidence, the loop's events) behaving the same on either."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy import (
    ControlStore,
    EvidenceBoard,
    FileControlStore,
    LiveMetrics,
    ModelRegistry,
    PostgresControlStore,
    RefreshInProgress,
    RefreshLease,
    RegistryFollower,
    ReplicaEvidence,
    RolloutState,
    VersionStats,
)
from deploy._control import take, update

pytestmark = pytest.mark.integration

Opener = Callable[[], ControlStore]


@pytest.fixture(params=["files", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another handle on one store: what another process (a replica, the loop, the
    CLI) would open. Each PostgreSQL test gets its own scope."""
    opened: list[ControlStore] = []
    if request.param == "files":

        def open_files() -> ControlStore:
            return FileControlStore(tmp_path / "registry")

        yield open_files
        return
    dsn = request.getfixturevalue("postgres_dsn")
    scope = f"test-{uuid.uuid4().hex[:12]}"

    def open_postgres() -> ControlStore:
        store = PostgresControlStore(dsn, scope=scope)
        opened.append(store)
        return store

    yield open_postgres
    for store in opened:
        assert isinstance(store, PostgresControlStore)
        store.close()


def test_read_put_and_revisions(opener: Opener) -> None:
    store = opener()
    assert store.read("pointers") is None
    store.put("pointers", {"current": "v1", "at": 1733561234.1234567})
    first = store.read("pointers")
    assert first is not None and first.value == {"current": "v1", "at": 1733561234.1234567}
    other = opener().read("pointers")  # another process sees the same value and revision
    assert other is not None and other.value == first.value and other.revision == first.revision
    store.put("pointers", {"current": "v2"})
    second = store.read("pointers")
    assert second is not None and second.revision != first.revision
    store.put("pointers", None)
    assert store.read("pointers") is None


def test_swap_writes_only_at_the_revision_read(opener: Opener) -> None:
    a, b = opener(), opener()
    assert a.swap("lease", None, {"holder": "a"})
    assert not b.swap("lease", None, {"holder": "b"})  # not absent any more
    seen = b.read("lease")
    assert seen is not None
    assert a.swap("lease", seen.revision, {"holder": "a", "beat": 2})
    assert not b.swap("lease", seen.revision, {"holder": "b"})  # stale: a wrote since
    assert (b.read("lease") or pytest.fail()).value == {"holder": "a", "beat": 2}
    now = b.read("lease")
    assert now is not None and b.swap("lease", now.revision, None)
    assert a.read("lease") is None


def test_concurrent_updates_lose_nothing(opener: Opener) -> None:
    """Four writers, each on its own handle, 25 read-modify-writes each: the counter ends
    at 100 (a plain read-then-write loses increments under this load)."""

    def bump(data: dict[str, int] | None) -> dict[str, int]:
        return {"n": (data or {}).get("n", 0) + 1}

    def writer() -> None:
        store = opener()
        for _ in range(25):
            update(store, "pointers", bump)  # type: ignore[arg-type]

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (opener().read("pointers") or pytest.fail()).value == {"n": 100}


def test_a_value_is_taken_once(opener: Opener) -> None:
    opener().put("refresh_request", {"reason": "drift"})
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(take(opener(), "refresh_request"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=str) == [None, None, None, {"reason": "drift"}]


def test_scan_lists_one_level_under_a_prefix(opener: Opener) -> None:
    store = opener()
    store.put("evidence/r1", {"n": 1})
    store.put("evidence/r2", {"n": 2})
    store.put("evidenceX", {"n": 3})
    store.put("pointers", {"n": 4})
    found = store.scan("evidence")
    assert {k: e.value for k, e in found.items()} == {"evidence/r1": {"n": 1}, "evidence/r2": {"n": 2}}
    assert all(e.updated_at > 0 for e in found.values())


def test_logs_keep_order_and_stay_apart(opener: Opener) -> None:
    a, b = opener(), opener()
    for i in range(5):
        (a if i % 2 else b).append("audit", {"i": i})
    b.append("loop_events", {"result": "promoted"})
    assert [e["i"] for e in opener().entries("audit")] == [0, 1, 2, 3, 4]
    assert opener().entries("loop_events") == [{"result": "promoted"}]
    assert opener().entries("nothing") == []


def test_keys_that_could_escape_are_refused(opener: Opener) -> None:
    from deploy import RegistryError

    for key in ("../pointers", "/etc/passwd", "a//b", ""):
        with pytest.raises(RegistryError, match="invalid control key"):
            opener().put(key, {})


def test_postgres_scopes_do_not_see_each_other(postgres_dsn: str) -> None:
    staging = PostgresControlStore(postgres_dsn, scope=f"staging-{uuid.uuid4().hex[:8]}")
    production = PostgresControlStore(postgres_dsn, scope=f"production-{uuid.uuid4().hex[:8]}")
    staging.put("pointers", {"current": "s"})
    staging.append("audit", {"action": "promote"})
    assert production.read("pointers") is None and production.entries("audit") == []


# ---- the control plane on either store ---------------------------------------------------
def _registry(tmp_path: Path, opener: Opener) -> ModelRegistry:
    """Versions on disk; pointers, audit and requests in the store under test."""
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text("{}")
    registry = ModelRegistry(tmp_path / "registry", opener())
    for version in ("v1", "v2"):
        registry.register(source, version, {"parent": None})
    return registry


def test_the_registry_lifecycle(tmp_path: Path, opener: Opener) -> None:
    registry = _registry(tmp_path, opener)
    registry.promote("v1", reason="bootstrap")
    registry.set_threshold_override(0.4, actor="ops")
    registry.start_canary("v2", 0.5)
    elsewhere = ModelRegistry(tmp_path / "registry", opener())  # a replica's view
    state = elsewhere.rollout_state()
    assert state.canary_share == 0.5 and state.threshold_override == 0.4
    assert state.model_path == registry.get("v1").path and state.canary_path == registry.get("v2").path
    registry.promote("v2", reason="canary passed")
    assert elsewhere.pointers() == {"current": "v2", "previous": "v1"}
    assert elsewhere.rollout_state().canary_dir is None and elsewhere.threshold_override() == 0.4
    elsewhere.rollback(reason="regressed", actor="admin")
    assert registry.pointers() == {"current": "v1", "previous": "v2"}
    actions = [e["action"] for e in registry.audit()]
    assert actions == ["register", "register", "promote", "threshold", "canary", "promote", "rollback"]
    registry.request_refresh(reason="drift", actor="admin")
    assert elsewhere.take_refresh_request() is not None and registry.take_refresh_request() is None


@pytest.mark.asyncio
async def test_a_replica_follows_pointer_changes_made_elsewhere(tmp_path: Path, opener: Opener) -> None:
    registry = _registry(tmp_path, opener)
    applied: list[RolloutState] = []

    async def apply(state: RolloutState) -> None:
        applied.append(state)

    follower = RegistryFollower(ModelRegistry(tmp_path / "registry", opener()), apply)
    assert not await follower.check()
    registry.promote("v1")
    assert await follower.check() and not await follower.check()
    registry.start_canary("v2", 0.25)
    assert await follower.check() and applied[-1].canary_share == 0.25


def test_one_lease_across_handles(opener: Opener) -> None:
    clock = [1000.0]
    first = RefreshLease(opener(), holder="stack loop", ttl_s=60, clock=lambda: clock[0])
    second = RefreshLease(opener(), holder="distillery retrain", ttl_s=60, clock=lambda: clock[0])
    first.acquire()
    try:
        with pytest.raises(RefreshInProgress, match="stack loop"):
            second.acquire()
        second.release()  # not its lease: nothing happens
        assert first.current() is not None
    finally:
        first.release()
    assert first.current() is None
    # A holder that stopped beating on another host: expired after its TTL, taken over once.
    opener().put("lease", {"holder": "dead", "token": "t", "host": "elsewhere", "heartbeat": 900.0})
    takers = [RefreshLease(opener(), holder=f"taker {i}", ttl_s=60, clock=lambda: clock[0]) for i in range(3)]
    won = []
    for taker in takers:
        try:
            taker.acquire()
            won.append(taker)
        except RefreshInProgress:
            pass
    assert len(won) == 1 and (opener().read("lease") or pytest.fail()).value["holder"] == won[0].holder
    won[0].release()


def test_canary_evidence_from_replicas_on_separate_handles(opener: Opener) -> None:
    def live(answers: float, escalated: float) -> LiveMetrics:
        return LiveMetrics({"v2": VersionStats(answers, escalated)}, {}, False, {})

    EvidenceBoard(opener()).publish(ReplicaEvidence.of("node-a-1", live(10, 1), 1.0))
    EvidenceBoard(opener()).publish(ReplicaEvidence.of("node-b-1", live(5, 2), 1.0))
    summed = EvidenceBoard(opener()).read()
    assert summed is not None and summed.stats("v2") == VersionStats(15, 3)


def test_settings_put_the_whole_control_plane_in_the_database(tmp_path: Path, postgres_dsn: str) -> None:
    """``control_store: database``: the CLI's registry, a model server's and the loop's
    events all use the tables; nothing of the control plane is written under the
    registry directory but the versions."""
    from distillery.settings import load_settings
    from gateway._model_server import _registry, tier_spec
    from retrain import EVENTS_LOG

    scope = f"settings-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        var_dir=tmp_path, control_store="database", control_scope=scope, feedback={"store_dsn": postgres_dsn}
    )
    registry = settings.open_registry()
    assert isinstance(registry.control, PostgresControlStore) and registry.control.scope == scope
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text("{}")
    registry.register(source, "v1", {"parent": None})
    registry.promote("v1")
    served = _registry(tier_spec(settings, "student"))
    assert served is not None and served.pointers()["current"] == "v1"
    registry.control.append(EVENTS_LOG, {"result": "promoted"})
    files = sorted(p.name for p in settings.resolved_registry_dir.iterdir())
    assert files == ["versions"]


@pytest.mark.asyncio
async def test_with_the_control_store_down_serving_keeps_its_rollout_and_nothing_is_half_applied(
    tmp_path: Path,
) -> None:
    """PostgreSQL stopped: a replica keeps the rollout it applied and says since when it
    cannot read the store; a promotion and a refresh's lease fail with a clear error (503 at
    the admin API, no DSN in it) and leave nothing behind; once it is back, the next
    promotion reaches the replica."""
    import asyncio

    from deploy import ControlStoreUnavailable
    from feedback._local_postgres import LocalPostgres
    from feedback.errors import StoreUnavailable
    from gateway.errors import to_error_response

    try:
        server = LocalPostgres.create(prefix_name="distillery-pg-control-")
    except StoreUnavailable as exc:
        pytest.skip(str(exc))
    try:
        registry = _registry(tmp_path, lambda: PostgresControlStore(server.dsn, scope="outage"))
        registry.promote("v1")
        applied: list[RolloutState] = []

        async def apply(state: RolloutState) -> None:
            applied.append(state)

        replica = ModelRegistry(tmp_path / "registry", PostgresControlStore(server.dsn, scope="outage"))
        follower = RegistryFollower(replica, apply, poll_s=0.05).start()
        try:

            async def until(cond: Callable[[], bool]) -> None:
                for _ in range(400):
                    if cond():
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError("timed out")

            await until(lambda: bool(applied))
            server.stop()
            await until(lambda: follower.status()["reachable"] is False)
            assert applied[-1].model_path == registry.get("v1").path and len(applied) == 1
            with pytest.raises(ControlStoreUnavailable) as raised:
                registry.promote("v2", reason="while the database is down")
            status, body = to_error_response(raised.value)
            assert status == 503 and body.error.code == "control_store_unavailable"
            assert "127.0.0.1" not in body.error.message and "postgresql" not in body.error.message
            with pytest.raises(ControlStoreUnavailable):
                RefreshLease(registry.control, holder="loop").acquire()
            server.start()
            await until(lambda: follower.status()["reachable"] is True)
            assert registry.pointers() == {"current": "v1", "previous": None}  # nothing half-applied
            assert "while the database is down" not in [e.get("reason") for e in registry.audit()]
            registry.promote("v2")
            await until(lambda: applied[-1].model_path == registry.get("v2").path)
        finally:
            await follower.stop()
    finally:
        server.remove()
