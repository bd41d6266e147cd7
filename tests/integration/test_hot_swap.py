"""Hot-swap, canary and rollback of the live student under continuous traffic."""

from __future__ import annotations

import time

import httpx
import pytest

from bench._traffic import Traffic
from deploy import ModelRegistry

pytestmark = pytest.mark.integration


def _until(traffic: Traffic, t0: float, expected: set[str], timeout_s: float = 30.0) -> float:
    """Waits until answers after ``t0`` show ``expected`` (the replicas poll the registry
    every second); returns when the first answer of the new state was seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with traffic._lock:
            recent = [(t, v) for t, v in traffic.versions if t >= t0]
        # the state holds once the last 20 answers show exactly the expected versions
        tail = {v for _, v in recent[-20:]}
        if len(recent) >= 20 and tail == expected:
            return recent[-20][0]
        time.sleep(0.2)
    raise AssertionError(
        f"after {timeout_s:.0f}s the answers still show {traffic.seen_since(t0)}, not {expected}"
    )


def test_hot_swap_canary_and_rollback_drop_nothing(live_stack, tmp_path):
    """The production path: the registry's pointers change, the serving process follows
    them in place (no replica replaced, no engine left behind), no request fails."""
    from retrain import ensure_registry

    settings = live_stack.settings
    registry = ModelRegistry(settings.resolved_registry_dir)
    initial = ensure_registry(registry, settings.tier_dir("student"))
    v1 = registry.register(initial.path, "student-v1-test", {"parent": initial.version})
    v2 = registry.register(initial.path, "student-v2-test", {"parent": "student-v1-test"})
    deadline = time.monotonic() + 30
    while (health := httpx.get(f"{live_stack.url}/healthz", timeout=10).json())["student"] != initial.version:
        assert time.monotonic() < deadline, f"the stack never served {initial.version}: {health}"
        time.sleep(0.2)
    starts_before = health["student_engine_starts"]
    try:
        with Traffic(live_stack.url) as traffic:
            t0 = time.monotonic()
            registry.promote(v1.version, reason="test")
            settled = _until(traffic, t0, {"student-v1-test"})
            assert traffic.seen_since(settled) == {"student-v1-test"}

            t0 = time.monotonic()
            registry.start_canary(v2.version, 0.5, actor="test")
            _until(traffic, t0, {"student-v1-test", "student-v2-test"})

            t0 = time.monotonic()
            registry.promote(v2.version, reason="canary healthy", actor="test")
            _until(traffic, t0, {"student-v2-test"})

            t0 = time.monotonic()
            back = registry.rollback(reason="test rollback", actor="test")
            assert back.version == v1.version
            _until(traffic, t0, {"student-v1-test"})
        sent = sum(traffic.statuses.values()) + len(traffic.errors)
        print(
            f"\nhot-swap under traffic: {sent} requests, statuses {dict(traffic.statuses)}, "
            f"errors {len(traffic.errors)}"
        )
        assert traffic.errors == []
        assert set(traffic.statuses) == {200}
        assert sent > 50
        assert [e["action"] for e in registry.audit()][-2:] == ["promote", "rollback"]
        # In place: the same serving process throughout; one engine per version loaded
        # (v1, the v2 canary promoted as loaded, v1 again after the rollback).
        health = httpx.get(f"{live_stack.url}/healthz", timeout=10).json()
        assert health["student_engine_starts"] - starts_before == 3
    finally:
        registry.promote(initial.version, reason="test cleanup", actor="test")
