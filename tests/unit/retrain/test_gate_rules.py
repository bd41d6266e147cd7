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


def _items(n: int, true_at: range) -> list[bool]:
    return [i in true_at for i in range(n)]


def _route(right: list[bool], escalated: list[bool], **kw: object) -> EvalResult:
    """One mastered-or-not route ``order_number`` with per-item answers."""
    return result(
        per_skill={"order_number": sum(right) / len(right)},
        suite_correct={"order_number": right},
        suite_escalated={"order_number": escalated},
        **kw,
    )


N = 51
CURRENT = _route(_items(N, range(2, N)), _items(N, range(0, 5)))  # 49 right; escalates 5 (both wrong ones)


def test_answers_in_another_template_that_all_escalate_are_not_forgetting():
    """Loop robustness seed 1 (real pair): 5 order_number answers of 51 switched to the
    teacher's other template ("The order number is 9320." for "... in this message is
    9320."), which token F1 >= 0.9 calls wrong; the candidate escalated every one of them,
    and 23% of the held-out traffic against the current's 51%. Greedy accuracy fell 0.961 ->
    0.863 (5 lost, 0 gained: p = 0.031); what it serves did not get worse."""
    candidate = _route(_items(N, range(7, N)), _items(N, range(0, 8)), escalation_rate=0.3)
    assert candidate.per_skill["order_number"] < 0.87
    assert judge(CURRENT, candidate, GateConfig()) == []


def test_a_route_served_wrong_more_often_beyond_chance_is_refused():
    # 6 more items kept and wrong (the candidate is sure of wrong answers)
    candidate = _route(_items(N, range(8, N)), _items(N, range(0, 2)), escalation_rate=0.3)
    (reason,) = judge(CURRENT, candidate, GateConfig())
    assert reason.startswith("route 'order_number' serves wrong answers more: 0.000 -> 0.118 of 51 items")
    assert "(6 worse, 0 better: sign test p=0.016)" in reason


def test_a_route_that_escalates_more_beyond_its_bar_and_chance_is_refused():
    candidate = _route(_items(N, range(2, N)), _items(N, range(0, 14)), escalation_rate=0.3)
    (reason,) = judge(CURRENT, candidate, GateConfig())
    assert reason.startswith("route 'order_number' escalates more: 0.098 -> 0.275 of 51 items")
    # within the bar (5 points) or within chance: not refused
    assert judge(CURRENT, _route(_items(N, range(2, N)), _items(N, range(0, 7))), GateConfig()) == []
    noisy = _route(_items(N, range(2, N)), _items(N, [*range(0, 3), *range(5, 13)]), escalation_rate=0.3)
    assert judge(CURRENT, noisy, GateConfig()) == []  # 8 worse, 2 better: p = 0.055


def test_a_route_not_mastered_is_not_protected():
    current = _route(_items(N, range(20, N)), _items(N, range(0, 20)))
    candidate = _route(_items(N, range(30, N)), _items(N, range(0, 5)), escalation_rate=0.3)
    assert judge(current, candidate, GateConfig()) == []


def test_without_the_sign_test_the_rates_alone_decide_and_without_items_the_accuracy_drop():
    candidate = _route(_items(N, range(2, N)), _items(N, range(0, 9)), escalation_rate=0.3)
    assert judge(CURRENT, candidate, GateConfig()) == []  # +8 points, 4 worse: p = 0.0625
    assert judge(CURRENT, candidate, GateConfig(route_regression_alpha=1.0))
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


def test_the_current_is_judged_at_the_threshold_it_is_served_at():
    from common.model_dir import CalibrationRecord

    scored = result(
        suite_scores={"order_number": [("text", 0.95), ("text", 0.97), ("json", 0.97), ("text", 0.99)]},
        suite_escalated={"order_number": [False] * 4},
    )
    served = CalibrationRecord(scorer="mean_logprob", threshold=0.98, by_kind={"json": 0.96})
    assert scored.escalated_at(served).suite_escalated == {"order_number": [True, True, False, False]}
    assert "suite_scores" not in scored.summary()


def _valid(n: int, invalid: set[int]) -> list[bool]:
    return [i not in invalid for i in range(n)]


def test_invalid_answers_past_the_bar_are_refused_only_beyond_chance():
    """Seed 1 of loop robustness: 2 of 96 answers cut off (0.021 > 0.020) refused a
    candidate that was better everywhere else; by items, 2 worse and 0 better is p=0.25."""
    current = result(invalid_rate=0.0, item_valid=_valid(96, set()))
    two = result(invalid_rate=2 / 96, escalation_rate=0.07, item_valid=_valid(96, {3, 40}))
    assert judge(current, two, GateConfig()) == []

    five = result(invalid_rate=5 / 96, escalation_rate=0.07, item_valid=_valid(96, {1, 2, 3, 4, 5}))
    reasons = judge(current, five, GateConfig())
    assert reasons == [
        "invalid answers 0.052 > 0.020 (current 0.000): 5 became invalid, 0 valid (sign test p=0.031)"
    ]

    traded = result(invalid_rate=5 / 96, escalation_rate=0.07, item_valid=_valid(96, {1, 2, 3, 4, 5}))
    was = result(invalid_rate=3 / 96, item_valid=_valid(96, {10, 11, 12}))
    assert judge(was, traded, GateConfig()) == [], "5 became invalid, 3 valid: within chance"


def test_without_per_item_answers_the_invalid_rate_alone_decides():
    reasons = judge(result(invalid_rate=0.0), result(invalid_rate=2 / 96, escalation_rate=0.3), GateConfig())
    assert reasons == ["invalid answers 0.021 > 0.020 (current 0.000)"]


def test_a_small_old_route_keeps_the_bar_it_is_served_at_when_the_candidate_is_as_right():
    """Seed 3: the candidate's shared bar rose 0.985 -> 0.992 and ``capital`` (too few items
    for a bar of its own) escalated its right answers live. It keeps 0.985 where the
    candidate serves no more of its items wrong there; a route it would serve worse does not."""
    from common.model_dir import CalibrationRecord
    from retrain._gate import keep_current_bars

    serving = CalibrationRecord(scorer="mean_logprob", threshold=0.985)
    scores = [("text", c) for c in (0.999, 0.99, 0.988, 0.986, 0.97)]
    current = result(
        suite_correct={"capital": [True, True, True, True, False], "plural": [True] * 5},
        suite_escalated={"capital": [False, False, False, False, True], "plural": [False] * 5},
    )
    candidate = result(
        threshold=0.992,
        suite_scores={"capital": scores, "plural": scores, "tools": [("tool_call", 0.99)] * 5},
        suite_correct={
            "capital": [True, True, True, True, False],
            "plural": [True, True, True, False, False],
        },
        suite_escalated={
            "capital": [False, True, True, True, True],
            "plural": [False, True, True, True, True],
        },
    )
    kept = keep_current_bars(current, candidate, serving)
    assert kept.route_thresholds == {"capital": 0.985}  # plural: 1 served wrong at 0.985 vs 0
    assert kept.suite_escalated["capital"] == [False, False, False, False, True]
    assert kept.suite_escalated["plural"] == candidate.suite_escalated["plural"]
    assert judge(current, kept, GateConfig()) == []
    # A route the candidate has its own bar for, or one served at a higher bar, is left alone.
    own = keep_current_bars(
        current, result(**{**candidate.__dict__, "route_thresholds": {"capital": 0.97}}), serving
    )
    assert own.route_thresholds == {"capital": 0.97}
    low = keep_current_bars(current, result(**{**candidate.__dict__, "threshold": 0.98}), serving)
    assert low.route_thresholds == {}
