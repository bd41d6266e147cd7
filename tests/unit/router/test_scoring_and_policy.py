import math

import pytest

from router import SCORER_NAMES, ThresholdPolicy, all_scores, get_scorer


def test_mean_logprob_is_geometric_mean_probability():
    lp = [math.log(0.9), math.log(0.5)]
    assert get_scorer("mean_logprob")(lp) == pytest.approx(math.sqrt(0.45))


def test_min_logprob_is_weakest_token():
    lp = [math.log(0.99), math.log(0.2), math.log(0.95)]
    assert get_scorer("min_logprob")(lp) == pytest.approx(0.2)


def test_quantile_interpolates_sorted_probabilities():
    probs = [0.1, 0.2, 0.3, 0.4, 0.5]
    lp = [math.log(p) for p in probs]
    assert get_scorer("quantile_25")(lp) == pytest.approx(0.2)
    assert get_scorer("quantile_10")(lp) == pytest.approx(0.14)


def test_empty_answer_scores_zero_for_every_scorer():
    assert all(v == 0.0 for v in all_scores([]).values())
    assert set(all_scores([0.0])) == set(SCORER_NAMES)


def test_scores_are_bounded_to_unit_interval():
    scores = all_scores([0.0, 0.0])
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["mean_logprob"] == 1.0


def test_unknown_scorer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scorer"):
        get_scorer("entropy")


def test_policy_escalates_strictly_below_threshold():
    policy = ThresholdPolicy("min_logprob", 0.5)
    assert policy.decide([math.log(0.4)]).escalate
    kept = policy.decide([math.log(0.5)])
    assert not kept.escalate
    assert kept.confidence == pytest.approx(0.5)
    assert set(kept.scores) == set(SCORER_NAMES)


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_policy_rejects_threshold_outside_unit_interval(threshold):
    with pytest.raises(ValueError):
        ThresholdPolicy("mean_logprob", threshold)


def test_policy_rejects_unknown_scorer():
    with pytest.raises(ValueError):
        ThresholdPolicy("nope", 0.5)
