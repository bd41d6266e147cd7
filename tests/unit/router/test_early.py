"""Deciding on a prefix: the commit rule and its calibration (pure logic)."""

import math
import random

import pytest

from router._early import CommitRule, CommitSample, EarlyDecider, calibrate_commit

SURE, UNSURE = math.log(0.99), math.log(0.5)


def test_nothing_is_decided_before_the_commit_point_and_the_verdict_then_holds():
    decider = EarlyDecider(CommitRule(commit_tokens=3, bar=0.9, threshold=0.95))
    assert [decider.feed(SURE) for _ in range(2)] == ["pending", "pending"]
    assert decider.feed(SURE) == "serve"
    assert decider.feed(UNSURE) == "serve"  # committed: a later token never retracts it
    assert decider.finish() == "serve"


def test_an_unsure_prefix_escalates_at_the_commit_point():
    decider = EarlyDecider(CommitRule(commit_tokens=2, bar=0.9, threshold=0.95))
    assert decider.feed(SURE) == "pending"
    assert decider.feed(UNSURE) == "escalate"
    assert decider.finish() == "escalate" and not decider.late_doubt()


def test_an_answer_shorter_than_the_commit_point_is_judged_whole_as_without_a_rule():
    rule = CommitRule(commit_tokens=8, bar=0.0, threshold=0.95)
    sure, unsure = EarlyDecider(rule), EarlyDecider(rule)
    for lp in (SURE, SURE):
        sure.feed(lp)
    for lp in (SURE, UNSURE):
        unsure.feed(lp)
    assert sure.finish() == "serve" and unsure.finish() == "escalate"
    assert EarlyDecider(rule).finish() == "escalate"  # an empty answer has no evidence


def test_a_committed_answer_whose_whole_scores_below_the_threshold_is_a_late_doubt():
    decider = EarlyDecider(CommitRule(commit_tokens=2, bar=0.9, threshold=0.9))
    for lp in (SURE, SURE, UNSURE, UNSURE):
        decider.feed(lp)
    assert decider.finish() == "serve" and decider.late_doubt()
    calm = EarlyDecider(CommitRule(commit_tokens=2, bar=0.9, threshold=0.5))
    for lp in (SURE, SURE, UNSURE):
        calm.feed(lp)
    assert calm.finish() == "serve" and not calm.late_doubt()


def test_a_rule_needs_a_commit_point_and_a_known_scorer():
    with pytest.raises(ValueError):
        CommitRule(commit_tokens=0, bar=0.5, threshold=0.5)
    with pytest.raises(ValueError):
        CommitRule(commit_tokens=2, bar=0.5, threshold=0.5, scorer="vibes")


def _answers(rng: random.Random, n: int, wrong_start_share: float, wrong_tail_share: float):
    """Templated answers: right ones sure throughout; wrong ones either unsure from the
    first token (caught by any prefix) or sure on their template and unsure at the tail
    (caught only by the whole answer)."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < wrong_start_share:
            lps, agrees = [UNSURE] + [SURE] * 7, False
        elif r < wrong_start_share + wrong_tail_share:
            lps, agrees = [SURE] * 6 + [UNSURE, UNSURE], False
        else:
            lps, agrees = [SURE] * 8, True
        out.append(CommitSample(tuple(lps), agrees))
    return out


def test_calibration_commits_at_the_first_token_when_the_first_token_tells_right_from_wrong():
    samples = _answers(random.Random(0), 200, wrong_start_share=0.2, wrong_tail_share=0.0)
    cal = calibrate_commit(samples, threshold=0.95)
    assert cal.chosen is not None and cal.chosen.commit_tokens == 1
    assert cal.chosen.agreement >= cal.whole_agreement
    assert cal.chosen.escalation_rate == pytest.approx(cal.whole_escalation_rate)
    rule = cal.rule(0.95, "mean_logprob")
    assert rule is not None and rule.commit_tokens == 1 and rule.threshold == 0.95


def test_calibration_waits_for_the_token_that_tells_and_never_serves_worse_than_whole_answers():
    samples = _answers(random.Random(1), 300, wrong_start_share=0.1, wrong_tail_share=0.15)
    cal = calibrate_commit(samples, threshold=0.95, candidates=(1, 2, 4, 6, 7, 8))
    assert cal.chosen is not None and cal.chosen.commit_tokens == 7
    for point in cal.points:  # every point's bar keeps the whole-answer agreement
        assert point.agreement >= cal.whole_agreement - 1e-12
    early = [p for p in cal.points if p.commit_tokens < 7]
    assert all(p.escalation_rate > cal.whole_escalation_rate + 0.02 for p in early)
    assert cal.chosen.flips == 0.0


def test_calibration_allows_a_drop_only_when_asked_and_keeps_whole_answers_when_nothing_fits():
    samples = _answers(random.Random(2), 300, wrong_start_share=0.0, wrong_tail_share=0.2)
    strict = calibrate_commit(samples, threshold=0.95, candidates=(2, 4))
    assert strict.chosen is None and "whole answers" in strict.why
    assert strict.rule(0.95, "mean_logprob") is None
    loose = calibrate_commit(samples, threshold=0.95, candidates=(2, 4), max_agreement_drop=0.25)
    assert loose.chosen is not None and loose.chosen.agreement >= loose.whole_agreement - 0.25


def test_too_few_calibration_answers_keep_whole_answers():
    samples = _answers(random.Random(3), 20, wrong_start_share=0.2, wrong_tail_share=0.0)
    cal = calibrate_commit(samples, threshold=0.95)
    assert cal.chosen is None and "< 50" in cal.why
    assert calibrate_commit([], threshold=0.9).chosen is None


def _brute(samples, threshold, k, floor):
    """The definition, answer by answer: the lowest bar meeting ``floor``."""
    from router._scoring import get_scorer

    score = get_scorer("mean_logprob")
    whole = [score(s.logprobs) < threshold for s in samples]
    prefix = {i: score(s.logprobs[:k]) for i, s in enumerate(samples) if len(s.logprobs) >= k}
    bars = [0.0, *sorted(set(prefix.values())), min(1.000001, max(prefix.values(), default=0.0) + 1e-6)]
    for bar in bars:
        esc = [prefix[i] < bar if i in prefix else whole[i] for i in range(len(samples))]
        agreement = sum(e or s.agrees for e, s in zip(esc, samples, strict=True)) / len(samples)
        if agreement >= floor - 1e-12:
            flips = sum(a != b for a, b in zip(esc, whole, strict=True)) / len(samples)
            return bar, sum(esc) / len(samples), agreement, flips
    return None


def test_the_sweep_finds_what_trying_every_bar_finds():
    rng = random.Random(7)
    for _ in range(40):
        samples = [
            CommitSample(
                tuple(math.log(rng.uniform(0.3, 1.0)) for _ in range(rng.randint(1, 8))), rng.random() < 0.8
            )
            for _ in range(rng.randint(50, 120))
        ]
        cal = calibrate_commit(samples, threshold=0.8, candidates=(1, 3, 5), max_extra_escalation=1.0)
        for point in cal.points:
            bar, esc, agreement, flips = _brute(samples, 0.8, point.commit_tokens, cal.whole_agreement)
            assert (point.bar, point.escalation_rate, point.flips) == pytest.approx((bar, esc, flips))
            assert point.agreement == pytest.approx(agreement)
