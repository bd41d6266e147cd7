"""The threshold policy: keep the student's answer iff its confidence clears the bar."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from router._scoring import all_scores, get_scorer

__all__ = ["Decision", "ThresholdPolicy", "resolve_threshold"]


@dataclass(frozen=True)
class Decision:
    confidence: float
    escalate: bool
    scores: dict[str, float] = field(default_factory=dict)
    invalid: str | None = None
    """Why the answer breaks its request's output contract (``router._contract``): such an
    answer escalates whatever its confidence."""


@dataclass(frozen=True)
class ThresholdPolicy:
    """Escalate when ``confidence < threshold``; ``threshold=0`` never escalates, ``>1`` always."""

    scorer: str = "mean_logprob"
    threshold: float = 0.9

    def __post_init__(self) -> None:
        get_scorer(self.scorer)
        if not 0.0 <= self.threshold <= 1.000001:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")

    def decide(self, logprobs: Sequence[float]) -> Decision:
        scores = all_scores(logprobs)
        confidence = scores[self.scorer]
        return Decision(confidence, confidence < self.threshold, scores)


def resolve_threshold(
    scorer: str,
    *,
    fallback: float,
    pinned: float | None = None,
    override: float | None = None,
    calibrated: float | None = None,
    calibrated_scorer: str | None = None,
) -> float:
    """The one precedence for a student's escalation threshold.

    An operator's live override (admin API, ``distillery models threshold``) beats
    everything: it is a decision taken now, e.g. to escalate less while the teacher is
    degraded. Then a threshold pinned in config (``cascade.threshold``), then the one
    calibrated for the answering version (when it was calibrated for this scorer), then
    the configured fallback."""
    if override is not None:
        return override
    if pinned is not None:
        return pinned
    if calibrated is not None and calibrated_scorer == scorer:
        return calibrated
    return fallback
