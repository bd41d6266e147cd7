"""Deciding on a prefix: when a streamed student answer may start flowing to the client.

The cascade judges an answer by its confidence, a score of its token log-probabilities,
so a whole-answer decision waits for the last token, and a stream that waits for the
decision is a replay. A **commit rule** decides at the ``commit_tokens``-th token instead:
the prefix's score against a bar of its own (``bar``); at or above it, the prefix and
every later token go to the client (committed: never retracted); below it the student's
generation is cancelled at once and the request escalates. An answer that ends before
the commit point is judged whole, exactly as without a rule.

The bar for a prefix is not the whole-answer threshold: a prefix's tokens are a different
sample (the first tokens of a templated answer are its surest). ``calibrate_commit``
picks, per commit point, the lowest bar whose served agreement on the calibration sample
is not below the whole-answer decision's (minus an allowed drop), and the earliest point
whose escalation rate stays within a budget of the whole-answer rate; it reports every
point's flips (decisions that differ from the whole-answer one), so the choice can be
read, not trusted.

After commit the rest of the answer may still score below the whole-answer threshold
(``late_doubt``): the answer stands, and the request is recorded so audits and the next
dataset can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from router._scoring import ConfidenceScorer, get_scorer

__all__ = [
    "CommitCalibration",
    "CommitPoint",
    "CommitRule",
    "CommitSample",
    "EarlyDecider",
    "Verdict",
    "calibrate_commit",
]

Verdict = Literal["pending", "serve", "escalate"]


@dataclass(frozen=True)
class CommitRule:
    """Decide at ``commit_tokens`` tokens on the prefix's ``scorer`` score against ``bar``.

    ``threshold`` is the whole-answer bar: it judges answers shorter than the commit point
    and tells a committed answer's late doubt."""

    commit_tokens: int
    bar: float
    threshold: float
    scorer: str = "mean_logprob"

    def __post_init__(self) -> None:
        get_scorer(self.scorer)
        if self.commit_tokens < 1:
            raise ValueError(f"commit_tokens must be at least 1, got {self.commit_tokens}")


class EarlyDecider:
    """Feeds on one answer's log-probs as they arrive; says when the answer is decided.

    ``feed`` returns ``pending`` until the commit point, then ``serve`` or ``escalate``
    once (later calls repeat the verdict). ``finish`` decides an answer that ended first,
    on the whole answer; after a ``serve`` it says whether the whole answer would have
    escalated (``late_doubt``)."""

    def __init__(self, rule: CommitRule) -> None:
        self.rule = rule
        self._score = get_scorer(rule.scorer)
        self.logprobs: list[float] = []
        self.verdict: Verdict = "pending"
        self.prefix_confidence: float | None = None

    def feed(self, logprob: float) -> Verdict:
        self.logprobs.append(logprob)
        if self.verdict == "pending" and len(self.logprobs) >= self.rule.commit_tokens:
            self.prefix_confidence = self._score(self.logprobs)
            self.verdict = "serve" if self.prefix_confidence >= self.rule.bar else "escalate"
        return self.verdict

    def finish(self, whole: Sequence[float] | None = None) -> Verdict:
        """The verdict once the answer has ended. ``whole``: the log-probs the whole-answer
        rule scores (the fed ones by default; an empty answer has no evidence and
        escalates)."""
        if self.verdict == "pending":
            self.verdict = "escalate" if self.whole_escalates(whole) else "serve"
        return self.verdict

    def whole_escalates(self, whole: Sequence[float] | None = None) -> bool:
        logprobs = self.logprobs if whole is None else whole
        return self._score(logprobs) < self.rule.threshold

    def late_doubt(self, whole: Sequence[float] | None = None) -> bool:
        """Committed early, and the whole answer scores below the whole-answer bar."""
        return self.prefix_confidence is not None and self.verdict == "serve" and self.whole_escalates(whole)


@dataclass(frozen=True)
class CommitSample:
    """One calibration answer: its log-probs and whether it agrees with the reference."""

    logprobs: tuple[float, ...]
    agrees: bool


@dataclass(frozen=True)
class CommitPoint:
    """What deciding at ``commit_tokens`` with ``bar`` does on the sample."""

    commit_tokens: int
    bar: float
    escalation_rate: float
    agreement: float
    """Served agreement: escalated answers count as agreeing (the teacher serves them)."""
    flips: float
    """Share of answers whose decision differs from the whole-answer one."""
    decided_early: float
    """Share of answers long enough to be decided at the commit point."""


@dataclass(frozen=True)
class CommitCalibration:
    whole_escalation_rate: float
    whole_agreement: float
    n: int
    points: list[CommitPoint] = field(default_factory=list)
    chosen: CommitPoint | None = None
    why: str = ""

    def rule(self, threshold: float, scorer: str) -> CommitRule | None:
        """The chosen point as a rule (None: decide on the whole answer)."""
        if self.chosen is None:
            return None
        return CommitRule(self.chosen.commit_tokens, self.chosen.bar, threshold, scorer)


DEFAULT_COMMIT_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16)


def calibrate_commit(
    samples: Sequence[CommitSample],
    *,
    threshold: float,
    scorer: str = "mean_logprob",
    candidates: Sequence[int] = DEFAULT_COMMIT_CANDIDATES,
    max_agreement_drop: float = 0.0,
    max_extra_escalation: float = 0.02,
    min_samples: int = 50,
) -> CommitCalibration:
    """The earliest commit point that serves as well as the whole-answer decision.

    Per candidate point, the lowest bar (escalation grows with the bar, so the lowest is
    the cheapest) whose served agreement is at least the whole-answer decision's minus
    ``max_agreement_drop``; the earliest point whose escalation rate is within
    ``max_extra_escalation`` of the whole-answer rate is chosen. Fewer than
    ``min_samples`` answers, or no point within budget: no rule (whole answers)."""
    score = get_scorer(scorer)
    n = len(samples)
    if n == 0:
        return CommitCalibration(0.0, 1.0, 0, why="no calibration answers")
    whole = [score(s.logprobs) < threshold for s in samples]
    whole_escalation = sum(whole) / n
    whole_agreement = sum(esc or s.agrees for esc, s in zip(whole, samples, strict=True)) / n
    if n < min_samples:
        why = f"{n} calibration answers < {min_samples}: whole answers"
        return CommitCalibration(whole_escalation, whole_agreement, n, why=why)
    points = [
        _best_bar(samples, whole, k, score, whole_agreement - max_agreement_drop)
        for k in sorted(set(candidates))
    ]
    within = [p for p in points if p.escalation_rate <= whole_escalation + max_extra_escalation + 1e-12]
    chosen = within[0] if within else None
    why = (
        f"commit at {chosen.commit_tokens} tokens (bar {chosen.bar:.4f}): escalation "
        f"{chosen.escalation_rate:.3f} vs {whole_escalation:.3f} whole, agreement "
        f"{chosen.agreement:.3f} vs {whole_agreement:.3f}, {chosen.flips:.1%} of decisions differ"
        if chosen is not None
        else f"no commit point escalates within {max_extra_escalation:g} of the whole answer's "
        f"{whole_escalation:.3f} at its agreement: whole answers"
    )
    return CommitCalibration(whole_escalation, whole_agreement, n, points, chosen, why)


def _best_bar(
    samples: Sequence[CommitSample],
    whole: Sequence[bool],
    k: int,
    score: ConfidenceScorer,
    floor: float,
) -> CommitPoint:
    """Answers of at least ``k`` tokens are decided on their prefix (as ``EarlyDecider``
    does: at the k-th token it cannot know the answer ends there), shorter ones whole.

    One sweep over the long answers sorted by prefix score: raising the bar past an
    answer's score moves it from served to escalated, so each count moves by one."""
    n = len(samples)
    long_ = sorted((score(s.logprobs[:k]), i) for i, s in enumerate(samples) if len(s.logprobs) >= k)
    short = [i for i, s in enumerate(samples) if len(s.logprobs) < k]
    escalated = sum(whole[i] for i in short)
    served_right = sum(samples[i].agrees for i in short if not whole[i])
    served_right += sum(samples[i].agrees for _, i in long_)
    flips = sum(whole[i] for _, i in long_)  # every long answer served: flipped where whole escalated

    def point(bar: float) -> CommitPoint:
        return CommitPoint(
            commit_tokens=k,
            bar=bar,
            escalation_rate=escalated / n,
            agreement=(escalated + served_right) / n,
            flips=flips / n,
            decided_early=len(long_) / n,
        )

    # Candidate bars: "serve every long answer", then each distinct prefix score (an
    # answer escalates strictly below the bar), then just above the highest.
    bars = [0.0, *sorted({c for c, _ in long_}), min(1.000001, (long_[-1][0] if long_ else 0.0) + 1e-6)]
    moved = 0
    last = point(0.0)
    for bar in bars:
        while moved < len(long_) and long_[moved][0] < bar:
            i = long_[moved][1]
            escalated += 1
            served_right -= samples[i].agrees
            flips += -1 if whole[i] else 1
            moved += 1
        last = point(bar)
        if last.agreement >= floor - 1e-12:
            return last
    # Escalating every long answer never serves less well than the whole-answer rule
    # (escalated answers count as agreeing), so with a floor at or below it the loop
    # returns; a floor above it (a negative allowed drop) may not be met.
    return last
