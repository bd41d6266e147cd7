"""A prompt-only prior: deciding a request's tier before the student's first token.

The cascade decides on the student's answer, so every request pays at least the student's
prefix, and a route the student always escalates pays it for nothing: its teacher answer
starts after the student's commit point (or its whole answer). RouteLLM and vLLM Semantic
Router decide before the call from the prompt alone; here the prompt's **route** (its
``metadata.route``, else ``feedback.route_labeler``) is the feature, and what the cascade
itself decided on that route is the training signal: the feedback store holds every
escalation and a known share (``feedback.sample_rate``) of the answers the student served,
each stamped with the answering student version. Per (version, route):

* ``teacher``: its escalation rate is surely at or above ``skip_student_at`` (the lower
  end of its confidence interval): the student is not asked; the teacher answers as an
  escalation decided at 0 tokens;
* ``student``: surely at or below ``stream_from_first_at`` (the upper end; off by
  default: a request served this way is not held for a confidence check, so an answer the
  whole-answer rule would have escalated is served; it is recorded as a late doubt): a
  streamed answer flows from its first token.

The interval is Wilson's on the store's counts thinned to the sampled population
(escalations kept at the sample rate), so a sampled store never looks surer than its
samples. A share of decided requests (``explore``) still takes the cascade's own path,
so the counts keep coming for a route the prior sends past the student; the escalations it
skips carry no student version and are not counted. A version without enough evidence on
a route has no verdict there, which is also what a new student version gets after a swap:
the cascade decides as before until its own counts say otherwise.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, Field

__all__ = [
    "EscalationPrior",
    "NO_PRIOR",
    "PriorConfig",
    "PriorEntry",
    "PriorVerdict",
    "RoutePrior",
    "learn_prior",
    "wilson_bounds",
]

PriorVerdict = Literal["student", "teacher"]


class PriorConfig(BaseModel):
    """``cascade.prior``: when the route decides before the student's first token.

    Parameters:
        enabled (`bool`, defaults to True): learn the prior from the feedback store.
        skip_student_at (`float | None`, defaults to 0.9): a route whose escalation rate
            is surely at least this is sent to the teacher without asking the student
            (None: never). It never lowers quality (the teacher answers); a route whose true
            rate is below it pays the teacher for the answers the student would have kept.
        stream_from_first_at (`float | None`, defaults to None): a route whose escalation
            rate is surely at most this streams the student from its first token, without
            waiting for the commit point (None: never; it trades served agreement for
            time to first token, so it is the operator's call).
        min_requests (`int`, defaults to 20): the least sampled-population size of a
            (version, route) before it has a verdict.
        z (`float`, defaults to 1.645): the interval's width (1.645: one-sided 95%).
        explore (`float`, defaults to 0.05): share of prior-decided requests that take the
            cascade's own path anyway, so the route's counts stay current.
        window_s (`float`, defaults to 3600): the store's events it learns from.
        refresh_s (`float`, defaults to 30): how often it re-reads them.
        version_ttl_s (`float`, defaults to 300): a student version seen answering within
            this long is still serving; the student is skipped only where every one of
            them says so (a canary's new version has no verdict yet).
    """

    enabled: bool = True
    skip_student_at: float | None = Field(default=0.9, gt=0.0, le=1.0)
    stream_from_first_at: float | None = Field(default=None, ge=0.0, lt=1.0)
    min_requests: int = Field(default=20, ge=1)
    z: float = Field(default=1.645, gt=0.0)
    explore: float = Field(default=0.05, ge=0.0, le=1.0)
    window_s: float = Field(default=3600.0, gt=0.0)
    refresh_s: float = Field(default=30.0, gt=0.0)
    version_ttl_s: float = Field(default=300.0, gt=0.0)


@dataclass(frozen=True)
class PriorEntry:
    """What the store says about one (student version, route)."""

    version: str
    route: str
    escalations: int
    samples: int
    sampled_n: float
    """The sampled population's size: samples plus escalations thinned to the sample rate."""
    rate: float
    lower: float
    upper: float
    verdict: PriorVerdict | None


def wilson_bounds(successes: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (``successes`` of ``n``; both may be fractional)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, successes / n))
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    denom = 1 + z2 / n
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)


def learn_prior(
    counts: Mapping[tuple[str | None, str | None, str], int], sample_rate: float, config: PriorConfig
) -> list[PriorEntry]:
    """Per (version, route) with a version and a route: counts are keyed (student version,
    route, event kind) over ``escalation`` and ``sample`` events."""
    pairs: dict[tuple[str, str], list[int]] = {}
    for (version, route, kind), count in counts.items():
        if not version or not route or kind not in ("escalation", "sample"):
            continue
        pair = pairs.setdefault((version, route), [0, 0])
        pair[0 if kind == "escalation" else 1] += count
    entries = []
    for (version, route), (escalations, samples) in sorted(pairs.items()):
        kept = escalations * sample_rate if 0.0 < sample_rate < 1.0 else float(escalations)
        if sample_rate <= 0.0:
            samples = 0  # nothing is sampled: escalations alone say nothing about a rate
        n = kept + samples
        lower, upper = wilson_bounds(kept, n, config.z)
        verdict: PriorVerdict | None = None
        if sample_rate > 0.0 and n >= config.min_requests:
            if config.skip_student_at is not None and lower >= config.skip_student_at:
                verdict = "teacher"
            elif config.stream_from_first_at is not None and upper <= config.stream_from_first_at:
                verdict = "student"
        rate = kept / n if n else 0.0
        entries.append(PriorEntry(version, route, escalations, samples, n, rate, lower, upper, verdict))
    return entries


class EscalationPrior(Protocol):
    """The cascade's view of a prior: asked before the student is called, and when the
    student's stream says which version answers."""

    def skip_student(self, route: str | None) -> bool: ...

    def stream_from_first(self, route: str | None, version: str) -> bool: ...

    def saw_version(self, version: str) -> None: ...


class _NoPrior:
    def skip_student(self, route: str | None) -> bool:
        return False

    def stream_from_first(self, route: str | None, version: str) -> bool:
        return False

    def saw_version(self, version: str) -> None:
        pass


NO_PRIOR: EscalationPrior = _NoPrior()


class RoutePrior:
    """The learned verdicts, swapped whole on each refresh (``update``), read per request."""

    def __init__(
        self,
        config: PriorConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._clock = clock
        self._verdicts: dict[tuple[str, str], PriorVerdict] = {}
        self.entries: list[PriorEntry] = []
        self._seen: dict[str, float] = {}

    def update(self, entries: Iterable[PriorEntry]) -> None:
        self.entries = list(entries)
        self._verdicts = {(e.version, e.route): e.verdict for e in self.entries if e.verdict is not None}

    def saw_version(self, version: str) -> None:
        if version:
            self._seen[version] = self._clock()

    def serving_versions(self) -> list[str]:
        horizon = self._clock() - self.config.version_ttl_s
        for version in [v for v, at in self._seen.items() if at < horizon]:
            del self._seen[version]
        return sorted(self._seen)

    def verdict(self, route: str | None, version: str) -> PriorVerdict | None:
        return self._verdicts.get((version, route)) if route else None

    def skip_student(self, route: str | None) -> bool:
        """Every version seen serving says ``teacher`` for the route (and this request is
        not one of the explored share)."""
        if not route or not self._verdicts:
            return False
        versions = self.serving_versions()
        if not versions or any(self.verdict(route, v) != "teacher" for v in versions):
            return False
        return not self._explored()

    def stream_from_first(self, route: str | None, version: str) -> bool:
        return self.verdict(route, version) == "student" and not self._explored()

    def _explored(self) -> bool:
        return self.config.explore > 0.0 and self._rng.random() < self.config.explore

    def table(self) -> list[dict[str, object]]:
        """For ``/healthz`` and the logs."""
        return [
            {
                "version": e.version,
                "route": e.route,
                "escalations": e.escalations,
                "samples": e.samples,
                "rate": round(e.rate, 4),
                "lower": round(e.lower, 4),
                "upper": round(e.upper, 4),
                "verdict": e.verdict,
            }
            for e in self.entries
        ]
