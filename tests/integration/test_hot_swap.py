"""Hot-swap, canary and rollback of the live student under continuous traffic."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
from ray import serve

from deploy import ModelRegistry
from gateway.app import APP_NAME, apply_rollout
from gateway.rollout import StudentRollout

pytestmark = pytest.mark.integration


class Traffic:
    """Closed-loop clients sending student-skill prompts until stopped."""

    def __init__(self, url: str, workers: int = 3, model: str = "distillery-student") -> None:
        self.url = url
        self.model = model
        self.statuses: Counter[int] = Counter()
        self.versions: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(workers)]
        self._lock = threading.Lock()

    def _loop(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(
                        f"{self.url}/v1/completions",
                        json={"model": self.model, "prompt": "reverse: abc =", "max_tokens": 8},
                    )
                    with self._lock:
                        self.statuses[r.status_code] += 1
                        if r.status_code == 200:
                            self.versions.append((time.monotonic(), r.headers["x-distillery-model-version"]))
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors.append(repr(exc))

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def seen_since(self, t0: float) -> set[str]:
        with self._lock:
            return {v for t, v in self.versions if t >= t0}


def test_hot_swap_canary_and_rollback_drop_nothing(live_stack, tmp_path):
    settings = live_stack.settings
    original = settings.tier_dir("student")
    registry = ModelRegistry(tmp_path / "registry")
    v1 = registry.register(original, "student-v1-test", {"parent": None})
    v2 = registry.register(original, "student-v2-test", {"parent": "student-v1-test"})
    registry.promote(v1.version)
    student = serve.get_deployment_handle("student", app_name=APP_NAME)
    replica_before = student.info.remote().result()["replica"]
    try:
        with Traffic(live_stack.url) as traffic:
            apply_rollout(settings, StudentRollout(model_dir=str(v1.path)))
            t_v1 = time.monotonic()
            time.sleep(2)
            assert traffic.seen_since(t_v1) == {"student-v1-test"}

            apply_rollout(
                settings, StudentRollout(model_dir=str(v1.path), canary_dir=str(v2.path), canary_share=0.5)
            )
            t_canary = time.monotonic()
            time.sleep(3)
            assert traffic.seen_since(t_canary) == {"student-v1-test", "student-v2-test"}

            registry.promote(v2.version, reason="canary healthy")
            apply_rollout(settings, StudentRollout(model_dir=str(v2.path)))
            t_v2 = time.monotonic()
            time.sleep(2)
            assert traffic.seen_since(t_v2) == {"student-v2-test"}

            back = registry.rollback(reason="test rollback")
            apply_rollout(settings, StudentRollout(model_dir=str(back.path)))
            t_back = time.monotonic()
            time.sleep(2)
            assert traffic.seen_since(t_back) == {"student-v1-test"}
        sent = sum(traffic.statuses.values()) + len(traffic.errors)
        print(
            f"\nhot-swap under traffic: {sent} requests, statuses {dict(traffic.statuses)}, "
            f"errors {len(traffic.errors)}"
        )
        assert traffic.errors == []
        assert set(traffic.statuses) == {200}
        assert sent > 50
        assert [e["action"] for e in registry.audit()][-2:] == ["promote", "rollback"]
        # In place: the same replica served throughout (user_config -> reconfigure).
        assert student.info.remote().result()["replica"] == replica_before
    finally:
        apply_rollout(settings, StudentRollout(model_dir=str(original)))
