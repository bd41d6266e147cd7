"""What the next refresh changes after a refused or rolled-back candidate.

Repeating the recipe that failed on nearly the same data mostly fails again (issue 25's
real-pair runs: three refreshes, two refused for the same causes). A failure's reasons
(the gate's, or the canary's) are sorted into causes, and each cause changes one thing:

* ``undertrained`` (held-out agreement short, escalation at the calibrated threshold not
  better, answers cut off at the length limit, the canary not better on its routes):
  more training, ``retry_step_factor`` times the steps and epochs of the failed attempt
  (compounding over consecutive failures, capped at ``max_step_factor`` of the base);
* ``forgetting`` (a route the current student masters regressed): more replay of the
  old routes, ``replay_share`` up by ``retry_replay_step`` (capped at
  ``max_replay_share``).

Every retry also waits for fresh feedback (the loop's ``min_new_examples`` since the failed
attempt) and trains on everything collected so far, so it has more data than the last.
Pure functions: the loop persists the last failure and logs the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from retrain.config import DistillConfig

__all__ = ["Failure", "RetryPlan", "causes_of", "plan_retry"]

Cause = Literal["undertrained", "forgetting", "calibration", "other"]

_CAUSES: tuple[tuple[str, Cause], ...] = (
    ("holdout agreement", "undertrained"),
    ("escalation rate at its calibrated threshold", "undertrained"),
    ("invalid answers", "undertrained"),
    ("json validity", "undertrained"),
    ("focus routes", "undertrained"),
    ("regressed", "forgetting"),
    ("serves wrong answers more", "forgetting"),
    ("escalates more", "forgetting"),
    ("other routes", "forgetting"),
    ("calibration error", "calibration"),
)

RETRY_STEP_FACTOR = 1.5
MAX_STEP_FACTOR = 3.0
RETRY_REPLAY_STEP = 0.15
MAX_REPLAY_SHARE = 0.75


class Failure(BaseModel):
    """A refresh that did not promote, as the loop state keeps it."""

    version: str
    result: Literal["refused", "rolled_back"]
    reasons: list[str]
    attempt: int = Field(default=1, ge=1)
    """Consecutive failures so far, this one included."""
    step_factor: float = 1.0
    replay_share: float | None = None


class RetryPlan(BaseModel):
    """The next attempt's changes to the distillation settings, and why."""

    attempt: int
    causes: list[Cause]
    step_factor: float
    replay_share: float | None
    summary: str

    def apply(self, config: DistillConfig) -> DistillConfig:
        """``config`` (resolved: steps known) with this plan's step and replay changes."""
        update: dict[str, object] = {}
        if self.step_factor != 1.0 and config.steps is not None:
            update["steps"] = round(config.steps * self.step_factor)
            if config.max_epochs is not None:
                update["max_epochs"] = config.max_epochs * self.step_factor
        if self.replay_share is not None:
            update["replay_share"] = self.replay_share
        return config.model_copy(update=update)


def causes_of(reasons: Sequence[str]) -> list[Cause]:
    """The causes named by a failure's reasons, in a stable order; ``other`` if none."""
    found: list[Cause] = []
    for reason in reasons:
        text = reason.lower()
        for needle, cause in _CAUSES:
            if needle in text and cause not in found:
                found.append(cause)
    order: tuple[Cause, ...] = ("undertrained", "forgetting", "calibration", "other")
    return sorted(found, key=order.index) or ["other"]


def plan_retry(failure: Failure | None, base: DistillConfig) -> RetryPlan | None:
    """The next attempt after ``failure`` (None: no failure, the configured recipe)."""
    if failure is None:
        return None
    causes = causes_of(failure.reasons)
    step_factor = failure.step_factor
    replay = failure.replay_share
    changes: list[str] = []
    if "undertrained" in causes:
        step_factor = min(MAX_STEP_FACTOR, step_factor * RETRY_STEP_FACTOR)
        changes.append(f"{step_factor:g}x the step budget")
    if "forgetting" in causes:
        current = base.replay_share if replay is None else replay
        replay = min(MAX_REPLAY_SHARE, current + RETRY_REPLAY_STEP)
        changes.append(f"replay share {replay:.2f}")
    changes.append("all feedback so far, with fresh escalations since the failure")
    summary = (
        f"attempt {failure.attempt + 1} after {failure.result} {failure.version} "
        f"({', '.join(causes)}): " + "; ".join(changes)
    )
    return RetryPlan(
        attempt=failure.attempt + 1,
        causes=causes,
        step_factor=step_factor,
        replay_share=replay,
        summary=summary,
    )
