from deploy import CanaryConfig, VersionStats, judge_canary, parse_live_metrics, parse_version_stats
from tests.unit.deploy.registries import answer_metrics, registry_with_two

TEXT = """# HELP distillery_student_answers_total x
# TYPE distillery_student_answers_total counter
distillery_student_answers_total{escalated="false",model_version="v1"} 90.0
distillery_student_answers_total{escalated="true",model_version="v1"} 10.0
distillery_student_answers_total{escalated="true",model_version="v2"} 30.0
distillery_student_answers_total{escalated="false",model_version="v2"} 10.0
"""


def test_parse_and_delta():
    stats = parse_version_stats(TEXT)
    assert stats["v1"] == VersionStats(100, 10) and stats["v2"] == VersionStats(40, 30)
    assert stats["v2"].minus(VersionStats(20, 20)) == VersionStats(20, 10)
    assert stats["v1"].escalation_rate == 0.1


def test_verdicts():
    cfg = CanaryConfig(min_requests=20, max_escalation_increase=0.05)
    current = VersionStats(100, 10)
    assert judge_canary(current, VersionStats(10, 0), cfg) == "wait"
    assert judge_canary(current, VersionStats(40, 30), cfg) == "rollback"
    assert judge_canary(current, VersionStats(40, 5), cfg) == "promote"
    assert judge_canary(current, VersionStats(40, 6), cfg) == "promote"  # within tolerance


def _scripted(registry_path, snapshots):
    from deploy import CanaryController, ModelRegistry

    reg = ModelRegistry(registry_path)
    texts = iter(snapshots)
    return reg, CanaryController(
        reg, lambda: next(texts), CanaryConfig(min_requests=20, timeout_s=100), sleep=lambda s: None
    )


def test_controller_rolls_back_a_canary_that_escalates_more(tmp_path):
    registry_with_two(tmp_path)
    reg, ctl = _scripted(
        tmp_path / "reg",
        [answer_metrics((0, 0), (0, 0)), answer_metrics((50, 5), (5, 5)), answer_metrics((90, 10), (5, 25))],
    )
    verdict, _, can = ctl.run("v2")
    assert verdict == "rollback" and can.escalation_rate > 0.8
    assert reg.pointers()["current"] == "v1" and reg.canary() == (None, 0.0)
    assert [e["action"] for e in reg.audit()][-2:] == ["canary", "canary_end"]
    assert "automatic rollback" in reg.audit()[-1]["reason"]


def test_controller_promotes_a_healthy_canary(tmp_path):
    registry_with_two(tmp_path)
    reg, ctl = _scripted(
        tmp_path / "reg", [answer_metrics((0, 0), (0, 0)), answer_metrics((90, 10), (27, 3))]
    )
    verdict, _, _ = ctl.run("v2")
    assert verdict == "promote"
    assert reg.pointers() == {"current": "v2", "previous": "v1"}
    assert reg.canary() == (None, 0.0)


AUDITED = """# TYPE distillery_student_answers_total counter
distillery_student_answers_total{escalated="false",model_version="v1"} 90.0
distillery_student_answers_total{escalated="true",model_version="v1"} 10.0
# TYPE distillery_audits_total counter
distillery_audits_total{model_version="v1",verdict="agreed"} 38.0
distillery_audits_total{model_version="v1",verdict="disagreed"} 2.0
distillery_audits_total{model_version="v2",verdict="agreed"} 5.0
# TYPE distillery_gate_agreement gauge
distillery_gate_agreement{model_version="v2"} 0.97
# TYPE distillery_audit_share gauge
distillery_audit_share{slot="current"} 0.02
distillery_audit_share{slot="canary"} 0.25
"""


def test_live_metrics_carry_audits_gate_values_and_whether_audits_are_on():

    live = parse_live_metrics(AUDITED)
    assert live.audits_on
    assert live.stats("v1") == VersionStats(100, 10, 40, 38)
    assert live.stats("v1").agreement == 0.95
    assert live.stats("v2") == VersionStats(0, 0, 5, 5)
    assert live.gate_agreement == {"v2": 0.97}
    assert not parse_live_metrics(TEXT).audits_on  # an older gateway: escalations only


def test_wilson_interval_is_a_bound_not_the_raw_ratio():
    from deploy import wilson_interval

    low, high = wilson_interval(27, 30)
    assert low < 0.9 < high and round(low, 2) == 0.74 and round(high, 2) == 0.97
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(30, 30)[1] == 1.0


# A candidate confidently wrong on one route of four: it no longer escalates there (its
# escalation rate halves) and serves wrong answers instead (a quarter of its audits disagree).
CURRENT = VersionStats(answers=400, escalated=40, audited=60, agreed=58)
CONFIDENTLY_WRONG = VersionStats(answers=100, escalated=5, audited=40, agreed=29)


def test_confidently_wrong_candidate_is_rolled_back_on_live_agreement():
    cfg = CanaryConfig(min_requests=50, min_audits=30)
    reference = CURRENT.agreement
    assert judge_canary(CURRENT, CONFIDENTLY_WRONG, cfg, audits_on=True, reference_agreement=reference) == (
        "rollback"
    )
    # What the escalation-only rule would have done with the same candidate:
    assert judge_canary(CURRENT, CONFIDENTLY_WRONG, cfg) == "promote"
    assert CONFIDENTLY_WRONG.escalation_rate < CURRENT.escalation_rate


def test_quality_rule_waits_for_enough_audits_and_promotes_a_good_candidate():
    cfg = CanaryConfig(min_requests=50, min_audits=30)
    few = VersionStats(answers=100, escalated=5, audited=10, agreed=5)
    assert judge_canary(CURRENT, few, cfg, audits_on=True, reference_agreement=0.97) == "wait"
    good = VersionStats(answers=100, escalated=5, audited=40, agreed=38)
    assert judge_canary(CURRENT, good, cfg, audits_on=True, reference_agreement=0.97) == "promote"
    # 36/40 (0.90) is below 0.97 but not confidently worse than 0.92: not rolled back.
    unsure = VersionStats(answers=100, escalated=5, audited=40, agreed=36)
    assert judge_canary(CURRENT, unsure, cfg, audits_on=True, reference_agreement=0.97) == "promote"
    # Audits switched off in the gateway: the escalation rule alone.
    assert judge_canary(CURRENT, few, cfg, audits_on=False, reference_agreement=0.97) == "promote"


def test_reference_is_the_current_versions_live_agreement_else_the_candidates_gate_value():
    from deploy._canary import agreement_reference

    live = parse_live_metrics(AUDITED)
    assert agreement_reference(live, "v1", "v2", CanaryConfig(min_audits=30)) == 0.95
    assert agreement_reference(live, "v1", "v2", CanaryConfig(min_audits=50)) == 0.97  # v1 too few
    assert agreement_reference(live, "v1", "v3", CanaryConfig(min_audits=50)) is None
