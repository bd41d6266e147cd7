import math

import pytest

from router import ThresholdPolicy, auroc, calibration_curve, pick_threshold


def _sample():
    # Five right answers with high confidence, three wrong with low, one wrong but confident.
    conf = [0.99, 0.98, 0.97, 0.96, 0.95, 0.5, 0.4, 0.3, 0.97]
    agree = [True, True, True, True, True, False, False, False, False]
    return conf, agree


def test_curve_spans_never_to_always_escalate():
    conf, agree = _sample()
    curve = calibration_curve(conf, agree)
    assert curve[0].escalation_rate == 0.0
    assert curve[0].agreement == pytest.approx(5 / 9)
    assert curve[-1].escalation_rate == 1.0
    assert curve[-1].agreement == 1.0


def test_curve_is_monotone_in_escalation_and_agreement():
    conf, agree = _sample()
    curve = calibration_curve(conf, agree)
    rates = [p.escalation_rate for p in curve]
    agreements = [p.agreement for p in curve]
    assert rates == sorted(rates)
    assert agreements == sorted(agreements)
    assert len(set(rates)) == len(rates)


def test_target_agreement_picks_cheapest_point_that_meets_it():
    conf, agree = _sample()
    point = pick_threshold(calibration_curve(conf, agree), target_agreement=8 / 9)
    # Escalating the three low-confidence wrong answers reaches 8/9 and no fewer escalations do.
    assert point.escalation_rate == pytest.approx(3 / 9)
    assert point.agreement == pytest.approx(8 / 9)
    assert 0.5 < point.threshold <= 0.95


def test_target_agreement_of_one_escalates_past_the_confident_mistake():
    conf, agree = _sample()
    point = pick_threshold(calibration_curve(conf, agree), target_agreement=1.0)
    assert point.agreement == 1.0
    assert point.threshold > 0.97


def test_target_escalation_rate_stays_within_budget():
    conf, agree = _sample()
    curve = calibration_curve(conf, agree)
    point = pick_threshold(curve, target_escalation_rate=0.25)
    assert point.escalation_rate <= 0.25
    assert point.escalation_rate == pytest.approx(2 / 9)


def test_exactly_one_target_required():
    curve = calibration_curve([0.5], [True])
    with pytest.raises(ValueError):
        pick_threshold(curve)
    with pytest.raises(ValueError):
        pick_threshold(curve, target_agreement=0.9, target_escalation_rate=0.1)


def test_curve_input_errors():
    with pytest.raises(ValueError):
        calibration_curve([], [])
    with pytest.raises(ValueError):
        calibration_curve([0.1], [True, False])


def test_auroc_perfect_random_and_undefined():
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5, 0.6], [True, True]) is None


def test_a_student_right_on_everything_keeps_a_floor_not_zero():
    """Found by the benchmarks: after a refresh the student was right on the whole gate
    sample and was recalibrated to 0.0, i.e. never escalate again."""
    conf = [0.91, 0.95, 0.99, 0.999]
    point = pick_threshold(calibration_curve(conf, [True] * 4), target_agreement=0.995)
    assert point.escalation_rate == 0.0
    assert point.threshold == 0.91
    assert ThresholdPolicy("mean_logprob", point.threshold).decide([math.log(0.5)]).escalate
