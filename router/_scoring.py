"""Confidence scores from the student's own token log-probabilities.

Each scorer maps a sequence of token log-probs to a number in [0, 1] where higher means
more confident, so thresholds read as probabilities whatever the scorer:

* ``mean_logprob``: exp of the mean log-prob (the geometric-mean token probability);
  length-normalised, robust to one odd token.
* ``min_logprob``: exp of the smallest log-prob, the weakest link.
* ``quantile_<q>``: the q-th quantile of the token probabilities (Gupta et al., ICLR 2024,
  found quantiles beat sum/mean for cascade deferral on some tasks).

An empty answer has no evidence and scores 0.0, so it always escalates.

Sampled requests (temperature > 0): the drawn token's probability mostly measures the
draw (SmolLM2-135M's correct "The capital of France is Paris." scores 0.70 greedy, 0.09
at temperature 1), so by default (``sampled_confidence="top_token"``) a sampled answer
is scored on the probability the model gave its *most likely* token at each step of the
path it took. Under greedy decoding the two are the same numbers, so one calibrated
threshold serves both; ``confidence_logprobs`` is the one place that choice is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from router._types import Generation

__all__ = [
    "SCORER_NAMES",
    "ConfidenceScorer",
    "SampledConfidence",
    "all_scores",
    "confidence_logprobs",
    "get_scorer",
]

SampledConfidence = Literal["top_token", "sampled_token"]

Scorer = Callable[[Sequence[float]], float]


@dataclass(frozen=True)
class ConfidenceScorer:
    name: str
    fn: Scorer

    def __call__(self, logprobs: Sequence[float]) -> float:
        if not logprobs:
            return 0.0
        return min(1.0, max(0.0, self.fn(logprobs)))


def _mean(lp: Sequence[float]) -> float:
    return math.exp(sum(lp) / len(lp))


def _min(lp: Sequence[float]) -> float:
    return math.exp(min(lp))


def _quantile(q: float) -> Scorer:
    def score(lp: Sequence[float]) -> float:
        probs = sorted(math.exp(x) for x in lp)
        pos = q * (len(probs) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return probs[lo] + (probs[hi] - probs[lo]) * (pos - lo)

    return score


_SCORERS: dict[str, ConfidenceScorer] = {
    s.name: s
    for s in (
        ConfidenceScorer("mean_logprob", _mean),
        ConfidenceScorer("min_logprob", _min),
        ConfidenceScorer("quantile_10", _quantile(0.10)),
        ConfidenceScorer("quantile_25", _quantile(0.25)),
    )
}
SCORER_NAMES: tuple[str, ...] = tuple(_SCORERS)


def get_scorer(name: str) -> ConfidenceScorer:
    try:
        return _SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(_SCORERS)}") from None


def all_scores(logprobs: Sequence[float]) -> dict[str, float]:
    """Every scorer's value, for events and calibration reports."""
    return {name: s(logprobs) for name, s in _SCORERS.items()}


def confidence_logprobs(
    generation: Generation, *, sampled: bool, mode: SampledConfidence = "top_token"
) -> Sequence[float]:
    """The log-probs a confidence score is computed from (see the module docstring).

    An empty answer yields no evidence (it always escalates)."""
    if not generation.text.strip():
        return []
    top = generation.top_logprobs
    if sampled and mode == "top_token" and len(top) == len(generation.token_logprobs):
        return top
    return generation.token_logprobs
