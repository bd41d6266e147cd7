"""Canary on the live stack: replicas follow the registry; live metrics decide.

The degrading candidate has the same weights (so it would pass any offline gate) but a
miscalibrated threshold that escalates everything: only live traffic can catch it.
"""

from __future__ import annotations

import json

import httpx
import pytest

from bench._traffic import Traffic, copy_with_threshold
from deploy import CanaryConfig, CanaryController, ModelRegistry
from retrain import ensure_registry

pytestmark = pytest.mark.integration


def test_live_canary_rolls_back_a_degrading_candidate_and_promotes_a_healthy_one(live_stack, tmp_path):
    settings = live_stack.settings
    registry = ModelRegistry(settings.resolved_registry_dir)
    initial = ensure_registry(registry, settings.tier_dir("student"))
    cal = json.loads((initial.path / "calibration.json").read_text())
    bad = registry.register(
        copy_with_threshold(initial.path, tmp_path / "bad", 1.000001),
        "student-bad",
        {"parent": initial.version},
    )
    good = registry.register(
        copy_with_threshold(initial.path, tmp_path / "good", cal["threshold"]),
        "student-good",
        {"parent": initial.version},
    )

    def fetch() -> str:
        return httpx.get(f"{live_stack.url}/metrics", timeout=10).text

    config = CanaryConfig(share=0.5, min_requests=30, max_escalation_increase=0.2, timeout_s=120)
    controller = CanaryController(registry, fetch, config, poll_s=1.0)
    try:
        with Traffic(live_stack.url, workers=3, model="distillery") as traffic:
            verdict, cur, can = controller.run(bad.version)
            assert verdict == "rollback", (cur, can)
            assert can.escalation_rate > 0.9 and cur.escalation_rate < 0.1
            assert registry.pointers()["current"] == initial.version

            verdict, cur, can = controller.run(good.version)
            assert verdict == "promote", (cur, can)
            assert registry.pointers()["current"] == good.version
        assert set(traffic.statuses) == {200} and traffic.errors == []
        actions = [e["action"] for e in registry.audit()]
        assert actions[-4:] == ["canary", "canary_end", "canary", "promote"]
    finally:
        registry.promote(initial.version, reason="test cleanup", actor="test")
