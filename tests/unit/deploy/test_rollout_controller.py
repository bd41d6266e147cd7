"""The rollout controller: the one place a gated candidate is promoted, canaried or rolled
back, on a real registry (files) and scripted gateway metrics."""

from __future__ import annotations

import itertools
from pathlib import Path

from deploy import CanaryConfig, ModelRegistry, RolloutController
from tests.unit.deploy.registries import answer_metrics, registry_with_two


def _controller(reg: ModelRegistry, snapshots: list[str] | None) -> RolloutController:
    texts = itertools.chain(snapshots or [], itertools.repeat(snapshots[-1] if snapshots else ""))
    ticks = itertools.count(step=10.0)  # each look at the clock, 10 s later
    return RolloutController(
        reg,
        CanaryConfig(min_requests=20, timeout_s=100),
        (lambda: next(texts)) if snapshots is not None else None,
        sleep=lambda s: None,
        clock=lambda: next(ticks),
    )


def test_without_a_canary_the_candidate_is_promoted_on_its_gate_and_says_so(tmp_path: Path) -> None:
    reg = registry_with_two(tmp_path)
    rollout = _controller(reg, [answer_metrics((0, 0), (0, 0))]).roll_out("v2", canary=False, actor="cli")
    assert rollout.promoted and not rollout.canaried
    assert reg.pointers()["current"] == "v2"
    assert reg.audit()[-1]["reason"] == "gate passed (no canary)" and reg.audit()[-1]["actor"] == "cli"
    assert reg.canary() == (None, 0.0)  # never canaried


def test_no_gateway_to_judge_on_promotes_on_the_gate(tmp_path: Path) -> None:
    reg = registry_with_two(tmp_path)
    rollout = _controller(reg, None).roll_out("v2", actor="loop", reason="drift: gate passed")
    assert rollout.promoted and not rollout.canaried
    assert reg.audit()[-1]["reason"] == "drift: gate passed"


def test_a_healthy_canary_is_promoted_with_its_evidence(tmp_path: Path) -> None:
    reg = registry_with_two(tmp_path)
    ctl = _controller(reg, [answer_metrics((0, 0), (0, 0)), answer_metrics((90, 10), (27, 3))])
    rollout = ctl.roll_out("v2", actor="loop")
    assert rollout.promoted and rollout.canaried
    assert rollout.candidate.answers == 30 and rollout.current.answers == 100
    assert reg.pointers() == {"current": "v2", "previous": "v1"}
    assert [e["action"] for e in reg.audit()][-2:] == ["canary", "promote"]
    assert rollout.seconds > 0


def test_a_canary_that_escalates_more_is_rolled_back_and_the_current_stays(tmp_path: Path) -> None:
    reg = registry_with_two(tmp_path)
    ctl = _controller(reg, [answer_metrics((0, 0), (0, 0)), answer_metrics((90, 10), (5, 25))])
    rollout = ctl.roll_out("v2", actor="loop")
    assert rollout.verdict == "rollback" and rollout.canaried and not rollout.promoted
    assert reg.pointers()["current"] == "v1" and reg.canary() == (None, 0.0)
    assert "escalation" in rollout.reason


def test_focus_routes_come_from_what_the_candidate_was_trained_on(tmp_path: Path) -> None:
    """A route with a real share of the new examples (and no answers yet to say it does not
    fail) is held to "clearly better"; with no per-route answers, no verdict: rolled back
    at the timeout, never promoted blind."""
    reg = registry_with_two(tmp_path)
    ctl = _controller(reg, [answer_metrics((0, 0), (0, 0)), answer_metrics((90, 10), (27, 3))])
    rollout = ctl.roll_out("v2", trained_on={"plural": 90, "capital": 5}, actor="loop")
    assert rollout.focus == ["plural"]
    assert rollout.verdict == "rollback" and "no verdict in time" in rollout.reason
    assert reg.pointers()["current"] == "v1"


def test_an_operators_promote_canary_and_rollback_go_through_it_and_are_recorded_as_theirs(
    tmp_path: Path,
) -> None:
    reg = registry_with_two(tmp_path)
    rollout = RolloutController(reg)  # no canary config or evidence needed for manual changes
    current = reg.pointers()["current"]
    rollout.start_canary("v2", 0.3, actor="alice")
    assert reg.canary() == ("v2", 0.3)
    rollout.end_canary(reason="looked bad", actor="alice")
    assert reg.canary() == (None, 0.0)
    assert rollout.promote("v2", reason="by hand", actor="bob").version == "v2"
    assert rollout.rollback(reason="undo", actor="bob").version == current
    rows = [(e["action"], e.get("actor")) for e in reg.audit()][-4:]
    assert rows == [("canary", "alice"), ("canary_end", "alice"), ("promote", "bob"), ("rollback", "bob")]
