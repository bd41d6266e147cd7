"""``gate.commit_escalation_budget``: what a deployment pays in escalations for an earlier
first token reaches the commit point its calibration writes."""

import math

from retrain._gate import commit_points
from retrain.config import GateConfig
from router import Generation, GenerationRequest

SURE, UNSURE = math.log(0.99), math.log(0.5)


def _answer(logprobs: list[float]) -> Generation:
    return Generation(
        text="x" * len(logprobs),
        tokens=["x"] * len(logprobs),
        token_logprobs=logprobs,
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=len(logprobs),
        model_id="student",
        model_version="v1",
    )


def _calibration_set() -> tuple[list[GenerationRequest], list[Generation], list[bool]]:
    """80 right answers sure throughout; 10 wrong ones unsure for their first three tokens;
    5 right ones unsure on their first token only. On one token the slow starters look like
    the wrong ones (escalating them costs 5 points); from two tokens on they do not."""
    shapes = (
        [([SURE] * 8, True)] * 80
        + [([UNSURE] * 3 + [SURE] * 5, False)] * 10
        + [([UNSURE] + [SURE] * 7, True)] * 5
    )
    requests = [GenerationRequest(prompt=f"q{i}", max_tokens=8) for i in range(len(shapes))]
    return requests, [_answer(lps) for lps, _ in shapes], [ok for _, ok in shapes]


def _commit_tokens(budget: float) -> int | None:
    requests, answers, agrees = _calibration_set()
    choice = commit_points(
        requests, answers, agrees, threshold=0.85, scorer="mean_logprob", escalation_budget=budget
    )["text"]
    return None if choice.record is None else choice.record.tokens


def test_the_default_budget_waits_for_the_prefix_that_decides_as_the_whole_answer() -> None:
    assert GateConfig().commit_escalation_budget == 0.02
    assert _commit_tokens(GateConfig().commit_escalation_budget) == 2


def test_a_larger_budget_buys_the_first_token() -> None:
    assert _commit_tokens(0.06) == 1
    assert _commit_tokens(0.0) == 2  # never below the whole answer's agreement, whatever the budget
