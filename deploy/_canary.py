"""Canary judgement from live gateway metrics: promote, roll back, or keep watching.

The gateway counts student answers per model version and whether each escalated
(``distillery_student_answers_total{model_version, escalated}``), and the shadow audits of
served answers per version and verdict (``distillery_audits_total{model_version,
verdict}``). Over a window, the canary is judged on both:

* escalations: a canary whose escalation rate is clearly above the current version's on
  the same traffic (it answers worse, or its threshold is off) is rolled back;
* live agreement: escalating less is only good if the answers it keeps are right. A
  candidate that is confidently wrong escalates *less* and would pass the first rule; its
  audits show it. With audits on (the gateway exports ``distillery_audit_share``), no
  verdict is given before ``min_audits`` of the canary's answers were audited, and the
  canary is rolled back when even the upper end of its agreement's Wilson interval is
  below the reference by more than ``max_agreement_drop``. The reference is the current
  version's live agreement (all its audits so far, once it has ``min_audits``), else the
  agreement the candidate showed at its gate (``distillery_gate_agreement``).

* the routes it was trained for: a refresh names its focus routes (those with a
  real share of its new training examples: the drifted ones). Escalating a little less
  overall is not what a refresh is for; on the focus routes the canary's escalation rate
  must be clearly lower than the current version's (the upper end of its Wilson interval
  at most ``1 - min_focus_improvement`` of the current's rate), and on the other routes
  not clearly higher (the lower end of its interval not above the current's rate). Counted per route from
  ``distillery_student_answers_total{route}``.

A bound, not the raw ratio: 27 of 30 agreeing is 0.90, but the interval (0.74, 0.97)
cannot tell a 0.95 version from a 0.80 one; the rule rolls back only what is worse with
confidence, and waits (to the timeout, a rollback) when too few audits arrive.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from deploy._registry import ModelRegistry
from deploy.errors import RegistryError

__all__ = [
    "CanaryConfig",
    "CanaryController",
    "LiveMetrics",
    "RouteSplit",
    "agreement_reference",
    "focus_routes",
    "judge_focus",
    "VersionStats",
    "judge_canary",
    "parse_live_metrics",
    "parse_version_stats",
    "wilson_interval",
]

Verdict = Literal["promote", "rollback", "wait"]


class CanaryConfig(BaseModel):
    """Parameters:
    share (`float`, defaults to 0.2): traffic share of the candidate during the canary.
    min_requests (`int`, defaults to 50): canary answers needed before any verdict.
    max_escalation_increase (`float`, defaults to 0.05): absolute increase of the canary's
        escalation rate over the current version's that triggers a rollback.
    timeout_s (`float`, defaults to 600): no verdict by then: roll back (fail safe).
    min_audits (`int`, defaults to 30): audited canary answers needed before a verdict,
        when the gateway audits (0: judge on escalations alone).
    max_agreement_drop (`float`, defaults to 0.05): how far below the reference agreement
        the upper Wilson bound of the canary's live agreement may fall before a rollback.
    confidence_z (`float`, defaults to 1.96): the interval's z (1.96: 95% two-sided).
    min_focus_requests (`int`, defaults to 30): canary answers on the focus routes needed
        before a verdict, when a refresh names focus routes.
    min_focus_improvement (`float`, defaults to 0.3): relative drop of the escalation rate
        on the focus routes the canary must show with confidence (0.3: the upper bound of
        its rate at most 70% of the current's).
    focus_min_rate (`float`, defaults to 0.3): a route the refresh trained on is a focus
        route only where the current version escalates at least this often
        (``failing_routes``; the real pair's old routes escalate 10-17%, drifted ones
        ~100%); and the focus rule applies only where it escalates this often on the
        focus routes together.
    focus_min_share (`float`, defaults to 0.1): a route is a focus route of a refresh when
        it holds at least this share of the refresh's new training examples.
    """

    share: float = Field(default=0.2, gt=0.0, le=1.0)
    min_requests: int = Field(default=50, ge=1)
    max_escalation_increase: float = Field(default=0.05, ge=0.0)
    timeout_s: float = Field(default=600.0, gt=0.0)
    min_audits: int = Field(default=30, ge=0)
    max_agreement_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    confidence_z: float = Field(default=1.96, gt=0.0)
    min_focus_requests: int = Field(default=30, ge=1)
    min_focus_improvement: float = Field(default=0.3, ge=0.0, lt=1.0)
    focus_min_rate: float = Field(default=0.3, ge=0.0, le=1.0)
    focus_min_share: float = Field(default=0.1, gt=0.0, le=1.0)


def wilson_interval(agreed: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (exact at 0 and n, unlike Wald's)."""
    if n <= 0:
        return 0.0, 1.0
    p = agreed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class VersionStats:
    answers: float = 0.0
    escalated: float = 0.0
    audited: float = 0.0
    agreed: float = 0.0

    @property
    def escalation_rate(self) -> float:
        return self.escalated / self.answers if self.answers else 0.0

    @property
    def agreement(self) -> float | None:
        """Live agreement with the teacher over the audits; None before any."""
        return self.agreed / self.audited if self.audited else None

    def minus(self, earlier: VersionStats) -> VersionStats:
        return VersionStats(
            self.answers - earlier.answers,
            self.escalated - earlier.escalated,
            self.audited - earlier.audited,
            self.agreed - earlier.agreed,
        )

    def describe(self) -> str:
        text = f"{self.escalation_rate:.3f} escalation over {self.answers:.0f} answers"
        if self.audited:
            text += f", {self.agreed:.0f}/{self.audited:.0f} audits agreed"
        return text


@dataclass(frozen=True)
class LiveMetrics:
    """What the canary reads from one scrape of the gateway."""

    versions: dict[str, VersionStats]
    gate_agreement: dict[str, float]
    audits_on: bool
    """The gateway audits canary answers (``distillery_audit_share{slot="canary"}`` > 0)."""

    by_route: dict[tuple[str, str], VersionStats] = field(default_factory=dict)
    """Answers and escalations per (model version, route label)."""

    def stats(self, version: str) -> VersionStats:
        return self.versions.get(version, VersionStats())

    def on_routes(self, version: str, routes: Collection[str], *, inside: bool = True) -> VersionStats:
        """``version``'s answers on ``routes`` (``inside``) or on every other route."""
        picked = [s for (v, r), s in self.by_route.items() if v == version and (r in routes) == inside]
        return VersionStats(sum(s.answers for s in picked), sum(s.escalated for s in picked))


@dataclass(frozen=True)
class RouteSplit:
    """The current version and the canary on a refresh's focus routes and on the rest."""

    current_focus: VersionStats
    canary_focus: VersionStats
    current_rest: VersionStats
    canary_rest: VersionStats

    @classmethod
    def of(
        cls, live: LiveMetrics, base: LiveMetrics, current: str, canary: str, routes: Collection[str]
    ) -> RouteSplit:
        """Counts since ``base`` (the scrape taken when the canary started)."""

        def since(version: str, inside: bool) -> VersionStats:
            now = live.on_routes(version, routes, inside=inside)
            return now.minus(base.on_routes(version, routes, inside=inside))

        return cls(since(current, True), since(canary, True), since(current, False), since(canary, False))

    def describe(self) -> str:
        return (
            f"focus routes: canary {self.canary_focus.describe()} vs current {self.current_focus.describe()};"
            f" other routes: canary {self.canary_rest.describe()} vs current {self.current_rest.describe()}"
        )


def parse_live_metrics(metrics_text: str) -> LiveMetrics:
    counts: dict[str, list[float]] = {}
    routes: dict[tuple[str, str], list[float]] = {}
    gate: dict[str, float] = {}
    audits_on = False
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if family.name == "distillery_student_answers" and sample.name.endswith("_total"):
                acc = counts.setdefault(labels["model_version"], [0.0] * 4)
                per_route = routes.setdefault((labels["model_version"], labels.get("route", "")), [0.0] * 4)
                acc[0] += sample.value
                per_route[0] += sample.value
                if labels.get("escalated") == "true":
                    acc[1] += sample.value
                    per_route[1] += sample.value
            elif family.name == "distillery_audits" and sample.name.endswith("_total"):
                acc = counts.setdefault(labels["model_version"], [0.0] * 4)
                acc[2] += sample.value
                if labels.get("verdict") == "agreed":
                    acc[3] += sample.value
            elif family.name == "distillery_gate_agreement":
                gate[labels["model_version"]] = sample.value
            elif family.name == "distillery_audit_share" and labels.get("slot") == "canary":
                audits_on = audits_on or sample.value > 0
    versions = {v: VersionStats(*acc) for v, acc in counts.items()}
    by_route = {key: VersionStats(*acc) for key, acc in routes.items()}
    return LiveMetrics(versions, gate, audits_on, by_route)


def parse_version_stats(metrics_text: str) -> dict[str, VersionStats]:
    return parse_live_metrics(metrics_text).versions


def judge_canary(
    current: VersionStats,
    canary: VersionStats,
    config: CanaryConfig,
    *,
    audits_on: bool = False,
    reference_agreement: float | None = None,
    compare_escalation: bool = True,
) -> Verdict:
    """``reference_agreement``: what the canary's live agreement is held to (see the module
    docstring); None skips the quality rule (no audits, or nothing to compare with).
    ``compare_escalation``: False where the routes are judged apart (``judge_focus``): the
    two versions' escalation rates over all their answers then compare different traffic
    mixes. The current version's answers on a drifted route are few (the route prior sends
    that route to the teacher without asking it) while the canary answers it, so a canary
    better on every route can escalate more in total (loop robustness seed 4 was rolled back
    at 30 answers on 0.300 vs 0.178, its drifted route at 0.267 vs 1.000)."""
    if canary.answers < config.min_requests:
        return "wait"
    if (
        compare_escalation
        and canary.escalation_rate > current.escalation_rate + config.max_escalation_increase
    ):
        return "rollback"
    if audits_on and config.min_audits > 0:
        if canary.audited < config.min_audits:
            return "wait"
        if reference_agreement is not None:
            _, upper = wilson_interval(canary.agreed, canary.audited, config.confidence_z)
            if upper < reference_agreement - config.max_agreement_drop:
                return "rollback"
    return "promote"


def judge_focus(split: RouteSplit, config: CanaryConfig) -> tuple[Verdict, str]:
    """The canary on the routes its refresh was for (clearly better, where the current
    version escalates enough to improve) and on the others (not clearly worse); the
    verdict and the rule that gave it."""
    z = config.confidence_z
    rest_low, _ = wilson_interval(split.canary_rest.escalated, split.canary_rest.answers, z)
    # Clearly worse (the lower bound above the current's rate) *and* worse than the promise
    # (the canary's rate more than max_escalation_increase above it). Not "the lower bound
    # more than max_escalation_increase above": a canary of 56 old-route answers at 8.9%
    # (the current at 0%) has a lower bound of 3.9% and would pass that while breaking the
    # 5-point promise. Not "clearly worse" alone either: against a current at 0%, 3 of 132
    # (2.3%) is clearly worse and well inside the promise (the demo's e2e loop rolled back
    # a refresh that took its drifted routes from 99% to 12% on that).
    rest_bar = split.current_rest.escalation_rate
    rest_rate = split.canary_rest.escalation_rate
    judged = split.canary_rest.answers >= config.min_requests and split.current_rest.answers > 0
    if judged and rest_low > rest_bar and rest_rate > rest_bar + config.max_escalation_increase:
        return "rollback", (
            f"other routes clearly worse: escalation >= {rest_low:.3f} > {rest_bar:.3f},"
            f" {rest_rate:.3f} > {rest_bar:.3f} + {config.max_escalation_increase:g}"
        )
    if split.canary_focus.answers < config.min_focus_requests:
        return "wait", f"{split.canary_focus.answers:.0f} of {config.min_focus_requests} focus-route answers"
    current_rate = split.current_focus.escalation_rate
    if split.current_focus.answers == 0 or current_rate < config.focus_min_rate:
        return "promote", "focus routes: the current version escalates too little there to judge"
    bar = current_rate * (1.0 - config.min_focus_improvement)
    low, high = wilson_interval(split.canary_focus.escalated, split.canary_focus.answers, z)
    if high <= bar:
        return "promote", f"focus routes clearly better: escalation <= {high:.3f} <= {bar:.3f}"
    if low > bar:
        return "rollback", f"focus routes not clearly better: escalation >= {low:.3f} > {bar:.3f}"
    return "wait", f"focus routes: escalation in [{low:.3f}, {high:.3f}] vs bar {bar:.3f}"


def focus_routes(new_by_route: dict[str, int], config: CanaryConfig) -> list[str]:
    """The routes holding at least ``focus_min_share`` of a refresh's new examples."""
    total = sum(new_by_route.values())
    if total <= 0:
        return []
    return sorted(r for r, n in new_by_route.items() if r and n / total >= config.focus_min_share)


def failing_routes(
    live: LiveMetrics, current: str, routes: Collection[str], config: CanaryConfig
) -> list[str]:
    """Of a refresh's focus routes, those the current version fails on: it escalates at
    least ``focus_min_rate`` of its answers there (all of them so far). Deduplication
    shrinks a drifted route's share of the new examples (few distinct prompts, asked
    again and again), so an old route escalating 16% of a lot of traffic held 10% of the
    new examples on the real pair and was judged as if it had drifted. A route with no
    answers of the current version yet stays in."""
    kept = []
    for route in routes:
        seen = live.on_routes(current, [route])
        if seen.answers == 0 or seen.escalation_rate >= config.focus_min_rate:
            kept.append(route)
    return sorted(kept)


def agreement_reference(
    live: LiveMetrics, current: str, candidate: str, config: CanaryConfig
) -> float | None:
    """The current version's live agreement once it has ``min_audits`` (all its audits so
    far: it served before the canary started), else the candidate's gate value."""
    cur = live.stats(current)
    if cur.agreement is not None and cur.audited >= max(1, config.min_audits):
        return cur.agreement
    return live.gate_agreement.get(candidate)


class CanaryController:
    """Runs one canary through the registry (replicas follow its pointers) and decides.

    ``fetch_metrics`` returns the live counts: every ingress replica's, summed
    (``deploy.EvidenceBoard.read``), or a ``/metrics`` text (every replica's concatenated:
    the parser sums them; one replica's scrape is one replica's evidence).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        fetch_metrics: Callable[[], str | LiveMetrics],
        config: CanaryConfig,
        *,
        poll_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._fetch = fetch_metrics
        self._config = config
        self._poll_s = poll_s
        self._sleep = sleep
        self._clock = clock
        self.detail = ""
        self.focus: list[str] = []
        """The focus routes the last canary was judged on."""
        self.reason = ""
        """The rule behind the last verdict (a rollback's cause, for the next attempt)."""

    def _live(self) -> LiveMetrics:
        got = self._fetch()
        return parse_live_metrics(got) if isinstance(got, str) else got

    def run(self, version: str, focus: Collection[str] = ()) -> tuple[Verdict, VersionStats, VersionStats]:
        """``focus``: the routes the candidate was trained for (``focus_routes``); empty:
        judged on all traffic alone. The last verdict's detail is ``self.detail``."""
        current = self._registry.pointers()["current"]
        if current is None:
            raise RegistryError("no current version to compare the canary with")
        base = self._live()
        focus = failing_routes(base, current, focus, self._config)
        self.focus = list(focus)
        self._registry.start_canary(version, self._config.share, actor="canary")
        started = self._clock()
        cur = can = VersionStats()
        while True:
            self._sleep(self._poll_s)
            live = self._live()
            cur = live.stats(current).minus(base.stats(current))
            can = live.stats(version).minus(base.stats(version))
            reference = agreement_reference(live, current, version, self._config)
            verdict = judge_canary(
                cur,
                can,
                self._config,
                audits_on=live.audits_on,
                reference_agreement=reference,
                compare_escalation=not focus,
            )
            detail = f"canary {can.describe()} vs current {cur.describe()}"
            self.reason = "escalation or live agreement of all the canary's answers"
            if focus:
                split = RouteSplit.of(live, base, current, version, focus)
                if verdict == "promote":
                    verdict, self.reason = judge_focus(split, self._config)
                detail += f"; {split.describe()}; {self.reason}"
            if live.audits_on and reference is not None:
                low, high = wilson_interval(can.agreed, can.audited, self._config.confidence_z)
                detail += f"; canary agreement in [{low:.3f}, {high:.3f}] vs reference {reference:.3f}"
            self.detail = detail
            if verdict == "promote":
                self._registry.promote(version, reason=f"canary healthy: {detail}", actor="canary")
                return verdict, cur, can
            if verdict == "rollback":
                self._registry.end_canary(reason=f"automatic rollback: {detail}", actor="canary")
                return verdict, cur, can
            if self._clock() - started > self._config.timeout_s:
                self.reason = f"no verdict in time ({self.reason})"
                self._registry.end_canary(
                    reason=f"automatic rollback: no verdict in time ({detail})", actor="canary"
                )
                return "rollback", cur, can
