"""Threshold calibration on a labelled sample.

A sample row is the student's confidence on a prompt and whether its answer agrees with
the teacher (or the ground truth). Escalated rows are served by the teacher, so they count
as agreeing; the curve trades escalation rate against that served agreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CalibrationPoint", "calibration_curve", "pick_threshold"]


@dataclass(frozen=True)
class CalibrationPoint:
    threshold: float
    escalation_rate: float
    agreement: float
    student_accuracy_kept: float
    """Agreement among the answers the student keeps (1.0 when it keeps none)."""


def calibration_curve(
    confidences: Sequence[float], agrees: Sequence[bool], weights: Sequence[float] | None = None
) -> list[CalibrationPoint]:
    """One point per distinct threshold worth trying, from "never" to "always" escalate.

    Candidate thresholds are the observed confidences (escalate strictly below) plus one
    just above the maximum, so every achievable split of the sample appears once.
    ``weights``: each answer's weight in the rates (default 1): the gate weighs routes
    equally, so a route with few answers in a sample another route dominates still
    decides where the bar sits for it.
    """
    if len(confidences) != len(agrees):
        raise ValueError("confidences and agrees differ in length")
    if not confidences:
        raise ValueError("calibration needs at least one labelled sample")
    w = list(weights) if weights is not None else [1.0] * len(confidences)
    if len(w) != len(confidences) or any(x <= 0 for x in w):
        raise ValueError("weights must be positive, one per answer")
    n = len(confidences)
    total = sum(w)
    rows = sorted(zip(confidences, agrees, w, strict=True), key=lambda r: r[0])
    candidates = sorted(set(confidences)) + [min(1.000001, max(confidences) + 1e-6)]
    total_agree = sum(x for ok, x in zip(agrees, w, strict=True) if ok)
    points: list[CalibrationPoint] = []
    below = 0
    below_w = 0.0
    agree_below = 0.0
    for t in [0.0, *candidates]:
        while below < n and rows[below][0] < t:
            agree_below += rows[below][2] if rows[below][1] else 0.0
            below_w += rows[below][2]
            below += 1
        kept = total - below_w
        kept_agree = total_agree - agree_below
        points.append(
            CalibrationPoint(
                threshold=t,
                escalation_rate=below_w / total,
                agreement=(below_w + kept_agree) / total,
                student_accuracy_kept=kept_agree / kept if kept > 1e-12 else 1.0,
            )
        )
    return _dedupe(points)


def _dedupe(points: list[CalibrationPoint]) -> list[CalibrationPoint]:
    """Of thresholds giving the same split, keeps the highest: a student that is right on
    the whole sample gets the lowest confidence it showed there as its threshold, not 0.0.
    A threshold of 0.0 would never escalate again, so a later drift onto something it does
    not know would produce no escalations (and no feedback to learn from)."""
    out: list[CalibrationPoint] = []
    for p in points:
        if out and out[-1].escalation_rate == p.escalation_rate:
            out[-1] = p
            continue
        out.append(p)
    return out


def pick_threshold(
    curve: Sequence[CalibrationPoint],
    *,
    target_agreement: float | None = None,
    target_escalation_rate: float | None = None,
) -> CalibrationPoint:
    """The cheapest point meeting the agreement target, or the most-escalating point
    within the escalation budget. Exactly one target must be given."""
    if (target_agreement is None) == (target_escalation_rate is None):
        raise ValueError("give exactly one of target_agreement or target_escalation_rate")
    ordered = sorted(curve, key=lambda p: p.escalation_rate)
    if target_agreement is not None:
        for p in ordered:
            if p.agreement >= target_agreement:
                return p
        return ordered[-1]
    assert target_escalation_rate is not None
    within = [p for p in ordered if p.escalation_rate <= target_escalation_rate]
    return within[-1] if within else ordered[0]
