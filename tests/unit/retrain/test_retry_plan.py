"""A refused or rolled-back refresh changes what failed in the next attempt."""

from retrain._retry import MAX_STEP_FACTOR, Failure, causes_of, plan_retry
from retrain.config import DistillConfig

BASE = DistillConfig(
    steps=100, batch_size=16, learning_rate=3e-4, warmup_steps=0, max_epochs=3.0, replay_share=0.5
)


def test_no_failure_no_change():
    assert plan_retry(None, BASE) is None


def test_the_gate_reasons_of_the_issue_are_undertraining():
    reasons = [
        "invalid answers 0.034 > 0.027 (current 0.017)",
        "escalation rate at its calibrated threshold 0.560 > current 0.491",
    ]
    assert causes_of(reasons) == ["undertrained"]
    plan = plan_retry(Failure(version="v2", result="refused", reasons=reasons), BASE)
    assert plan is not None and plan.attempt == 2
    tuned = plan.apply(BASE)
    assert tuned.steps == 150 and tuned.max_epochs == 4.5 and tuned.replay_share == 0.5
    assert "undertrained" in plan.summary and "1.5x the step budget" in plan.summary


def test_a_regressed_route_means_more_replay_not_more_steps():
    failure = Failure(version="v2", result="refused", reasons=["route 'orders' regressed 0.950 -> 0.800"])
    plan = plan_retry(failure, BASE)
    assert plan is not None and plan.causes == ["forgetting"]
    tuned = plan.apply(BASE)
    assert tuned.steps == 100 and tuned.replay_share == 0.65


def test_consecutive_failures_compound_up_to_a_cap():
    failure = Failure(
        version="v3",
        result="rolled_back",
        reasons=["focus routes not clearly better"],
        attempt=3,
        step_factor=2.25,
    )
    plan = plan_retry(failure, BASE)
    assert plan is not None and plan.attempt == 4 and plan.step_factor == MAX_STEP_FACTOR


def test_an_unknown_reason_changes_nothing_but_the_data():
    plan = plan_retry(Failure(version="v2", result="rolled_back", reasons=["no verdict in time ()"]), BASE)
    assert plan is not None and plan.causes == ["other"] and plan.apply(BASE) == BASE


def test_the_step_budget_follows_the_dataset_size():
    assert BASE.budgeted(452).steps == 85  # ceil(3 x 452 / 16)
    assert BASE.budgeted(20000).steps == 100  # capped by steps
    assert BASE.budgeted(10).steps == 20  # never below min_steps
    assert BASE.model_copy(update={"max_epochs": None}).budgeted(452).steps == 100


def test_nightly_at_takes_hh_mm_or_an_off_word_from_the_environment():
    import pytest
    from pydantic import ValidationError

    from retrain import LoopConfig

    assert LoopConfig(nightly_at="null").nightly_at is None
    assert LoopConfig(nightly_at="").nightly_at is None
    assert LoopConfig(nightly_at="03:30").nightly_at == "03:30"
    with pytest.raises(ValidationError, match="HH:MM"):
        LoopConfig(nightly_at="3am")
