"""The whole loop on the real stack: Serve, Tansu, the store, Evidently, TRL, canary.

Duration on 2 cores: ~3-4 minutes (3,000 drift requests, a 600-step TRL run, the gate,
a live canary). Marked slow; it runs in ``make test`` (CI) all the same.
"""

from __future__ import annotations

import time

import pytest

from deploy import ModelRegistry
from distillery._scenario import run_scenario
from distillery._workloads import demo_refresh_loop
from retrain import ensure_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_traffic_drift_is_detected_distilled_gated_canaried_and_escalations_fall(live_stack, tmp_path):
    settings = live_stack.settings
    registry = ModelRegistry(settings.resolved_registry_dir)
    initial = ensure_registry(registry, settings.tier_dir("student"))
    try:  # the stack is session-wide: whatever fails, the next test gets the initial student
        loop = demo_refresh_loop(live_stack, tmp_path / "candidates")
        started = time.monotonic()
        try:
            report = run_scenario(live_stack.url, loop, plot_path=tmp_path / "scenario.png")
        finally:
            duration = time.monotonic() - started
            print(f"\ne2e loop: {duration:.0f}s")
        before, drift, after = report.windows[0], report.windows[1], report.windows[-1]
        assert all(e["trigger"] == "drift" and e["drift"]["drifted"] for e in report.loop), report.loop
        # A first candidate may be refused by the gate (then more feedback, one more refresh);
        # a refused one must never have been served.
        assert all(e["result"] == "refused" for e in report.loop[:-1]), report.loop
        event = report.loop[-1]
        assert event["result"] == "promoted", report.loop
        # Every stage from drift detection to the swap is timed (benchmarks report them).
        assert {"drift_check", "dataset", "train", "gate", "register", "canary"} <= set(event["timings_s"])
        new_version = event["version"]
        assert registry.pointers()["current"] == new_version
        assert after.student_versions == [new_version]
        # Escalations on the drifted skills fall to less than half of what they were.
        assert drift.escalation_rate_new_skills > 0.9
        assert after.escalation_rate_new_skills < drift.escalation_rate_new_skills / 2
        # Old skills do not regress beyond 3 points; served answers stay right.
        assert after.accuracy_old_skills >= before.accuracy_old_skills - 0.03
        assert after.accuracy_new_skills >= 0.95
        assert after.cost_vs_teacher_only < drift.cost_vs_teacher_only
        assert (tmp_path / "scenario.png").stat().st_size > 10_000
    finally:
        registry.promote(initial.version, reason="test cleanup", actor="test")
