"""The agreement metrics on the answers a real instruct model gives (measured pairs)."""

import pytest

from router import AgreementConfig, AgreementMetric, agreement_score


def metric(name: str, threshold: float = 0.8, key_tokens: bool = True) -> AgreementMetric:
    return AgreementMetric(AgreementConfig(metric=name, threshold=threshold, key_tokens=key_tokens))


def test_exact_only_forgives_surrounding_whitespace():
    exact = metric("exact")
    assert exact(" The capital of Canada is Ottawa.\n", "The capital of Canada is Ottawa.")
    assert not exact("the capital of canada is ottawa", "The capital of Canada is Ottawa.")


def test_normalized_ignores_case_punctuation_and_spacing_but_not_words():
    norm = metric("normalized")
    assert norm("the capital of  Canada is Ottawa", "The capital of Canada is Ottawa.")
    assert norm("\uff34\uff28\uff25 ANSWER", "the answer")  # NFKC folds full-width letters
    assert not norm("The capital of Canada is Toronto.", "The capital of Canada is Ottawa.")


def test_token_f1_scores_overlap_and_agrees_at_its_threshold():
    short, long_ = "The order number is 2311.", "The order number in this message is 2311."
    assert agreement_score(short, long_, "token_f1") == pytest.approx(2 * 5 / (5 + 8))
    assert metric("token_f1", 0.75)(short, long_)
    assert not metric("token_f1", 0.9)(short, long_)


def test_soft_metrics_at_a_low_threshold_accept_a_wrong_entity_which_is_why_the_preset_uses_0_9():
    wrong = ("The capital of Russia is Kiev.", "The capital of Russia is Moscow.")
    assert agreement_score(*wrong, "token_f1") == pytest.approx(5 / 6)
    assert metric("token_f1", 0.8)(*wrong)
    assert not metric("token_f1", 0.9)(*wrong)


def test_a_different_number_never_agrees_under_a_soft_metric_with_key_tokens():
    a = "Thanks for waiting: your order number is 5249 and it ships tomorrow morning by courier."
    b = "Thanks for waiting: your order number is 5294 and it ships tomorrow morning by courier."
    assert agreement_score(a, b, "token_f1") > 0.9
    assert not metric("token_f1", 0.8)(a, b)
    assert metric("token_f1", 0.8, key_tokens=False)(a, b)
    assert not metric("chrf", 0.5)(a, b)


def test_with_numbers_deciding_the_teachers_other_template_agrees_but_another_number_does_not():
    decide = AgreementMetric(AgreementConfig(metric="token_f1", threshold=0.9, numbers_decide=True))
    short, long_ = "The order number is 2311.", "The order number in this message is 2311."
    assert decide(short, long_) and not metric("token_f1", 0.9)(short, long_)
    assert not decide("The order number is 2313.", long_)
    assert not decide("The order number is 2311 or 2313.", long_)  # numbers differ as a list
    # Without numbers the words decide, as before.
    assert not decide("The capital of Russia is Kiev.", "The capital of Russia is Moscow.")
    assert decide("The capital of Canada is Ottawa", "The capital of Canada is Ottawa.")
    # Off without key tokens, and named so a calibration records which rule judged it.
    loose = AgreementMetric(
        AgreementConfig(metric="token_f1", threshold=0.9, key_tokens=False, numbers_decide=True)
    )
    assert not loose(short, long_)
    assert decide.name == "token_f1>=0.9|numbers" and loose.name == "token_f1>=0.9"


def test_chrf_is_one_for_equal_text_and_falls_with_edits():
    assert agreement_score("knives", "knives", "chrf") == pytest.approx(1.0)
    assert agreement_score("The plural of knife is knives.", "The plural of knife is knifes.", "chrf") < 1.0
    assert agreement_score("", "", "chrf") == 1.0
    assert agreement_score("abc", "", "chrf") == 0.0


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError):
        agreement_score("a", "b", "bleu")
    with pytest.raises(ValueError):
        AgreementConfig(metric="bleu")  # type: ignore[arg-type]
