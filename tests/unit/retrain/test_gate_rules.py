"""The gate's verdict on numbers: "not worse" than the serving student, per check."""

from retrain import EvalResult, GateConfig
from retrain._gate import judge


def result(**kw: object) -> EvalResult:
    base: dict[str, object] = {
        "version": "v",
        "holdout_agreement": 0.9,
        "suite_accuracy": 0.9,
        "per_skill": {"capital": 0.93, "order_number": 0.8},
        "invalid_rate": 0.02,
        "ece": 0.15,
        "threshold": 0.98,
        "escalation_rate": 0.4,
        "served_agreement": 0.97,
    }
    base.update(kw)
    return EvalResult(**base)  # type: ignore[arg-type]


def test_a_real_students_uncalibrated_confidence_is_judged_against_the_current_one():
    current = result(ece=0.15)
    assert judge(current, result(ece=0.16, escalation_rate=0.3), GateConfig()) == []
    reasons = judge(current, result(ece=0.2, escalation_rate=0.3), GateConfig())
    assert reasons and "calibration error 0.200 > 0.170" in reasons[0]


def test_the_absolute_bars_still_hold_where_the_current_student_is_below_them():
    current = result(ece=0.02, invalid_rate=0.0)
    assert judge(current, result(ece=0.09, invalid_rate=0.02, escalation_rate=0.3), GateConfig()) == []
    reasons = judge(current, result(ece=0.12, invalid_rate=0.03, escalation_rate=0.3), GateConfig())
    assert len(reasons) == 2


def test_only_mastered_routes_are_protected_from_regression():
    current = result()
    worse = result(per_skill={"capital": 0.90, "order_number": 0.5}, escalation_rate=0.3)
    reasons = judge(current, worse, GateConfig())
    assert reasons == ["route 'capital' regressed 0.930 -> 0.900"]  # order_number (0.8) is not mastered


def test_escalating_more_at_its_own_threshold_is_refused():
    assert any("escalation rate" in r for r in judge(result(), result(escalation_rate=0.41), GateConfig()))


def test_a_gate_with_nothing_to_judge_on_refuses(tmp_path):
    from retrain import run_gate

    report = run_gate(tmp_path / "cur", tmp_path / "cand", [], [], GateConfig())
    assert not report.passed and "nothing to judge" in report.reasons[0]
