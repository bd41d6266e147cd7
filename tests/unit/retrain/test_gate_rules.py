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


def _route(right: int, n: int = 51, *, lose: int = 0, gain: int = 0) -> tuple[float, list[bool]]:
    """A route's suite answers: the first ``right`` items right, then ``lose`` of the right
    ones turned wrong and ``gain`` of the wrong ones turned right."""
    items = [i < right for i in range(n)]
    for i in range(lose):
        items[i] = False
    for i in range(gain):
        items[right + i] = True
    return sum(items) / n, items


def _with_route(acc_items: tuple[float, list[bool]], **kw: object) -> EvalResult:
    acc, items = acc_items
    return result(per_skill={"order_number": acc}, suite_correct={"order_number": items}, **kw)


def test_a_route_drop_of_a_few_answers_that_could_be_noise_is_not_forgetting():
    """Loop robustness seed 1 (real pair): 4 order_number answers of 51 changed template
    ("The order number is 9320." for "... in this message is 9320."), all of them escalated;
    the candidate escalated 23% of the holdout vs 51%. p = 1/16 for 4 lost, 0 gained."""
    current = _with_route(_route(49))
    candidate = _with_route(_route(49, lose=4), escalation_rate=0.3)
    assert candidate.per_skill["order_number"] < 0.9
    assert judge(current, candidate, GateConfig()) == []


def test_a_route_that_loses_answers_beyond_chance_is_refused_and_the_reason_says_by_how_many():
    current = _with_route(_route(49))
    candidate = _with_route(_route(49, lose=9, gain=1), escalation_rate=0.3)
    (reason,) = judge(current, candidate, GateConfig())
    assert reason.startswith("route 'order_number' regressed 0.961 -> 0.804")
    assert "9 answers lost, 1 gained of 51: sign test p=0.011" in reason


def test_without_the_sign_test_or_the_items_the_accuracy_drop_alone_decides():
    current, candidate = _with_route(_route(49)), _with_route(_route(49, lose=4), escalation_rate=0.3)
    assert judge(current, candidate, GateConfig(route_regression_alpha=1.0))
    bare_cur = result(per_skill={"order_number": 49 / 51})
    bare_cand = result(per_skill={"order_number": 45 / 51}, escalation_rate=0.3)
    assert judge(bare_cur, bare_cand, GateConfig())  # numbers only: no pairing to test


def test_the_sign_test():
    from retrain._gate import sign_test_p

    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(4, 0) == 1 / 16
    assert sign_test_p(5, 0) == 1 / 32
    assert sign_test_p(1, 1) == 3 / 4
    assert abs(sign_test_p(9, 1) - 11 / 1024) < 1e-12
