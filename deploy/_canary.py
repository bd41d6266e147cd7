"""Canary judgement from live gateway metrics: promote, roll back, or keep watching.

The gateway counts student answers per model version and whether each escalated
(``distillery_student_answers_total{model_version, escalated}``). Over a window, the
canary's escalation rate is compared with the current version's on the same traffic; a
canary that escalates clearly more (it answers worse, or its threshold is off) is rolled
back automatically, one that holds up over enough requests is promoted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from deploy._registry import ModelRegistry
from deploy.errors import RegistryError

__all__ = ["CanaryConfig", "CanaryController", "VersionStats", "judge_canary", "parse_version_stats"]

Verdict = Literal["promote", "rollback", "wait"]


class CanaryConfig(BaseModel):
    """Parameters:
    share (`float`, defaults to 0.2): traffic share of the candidate during the canary.
    min_requests (`int`, defaults to 50): canary answers needed before any verdict.
    max_escalation_increase (`float`, defaults to 0.05): absolute increase of the canary's
        escalation rate over the current version's that triggers a rollback.
    timeout_s (`float`, defaults to 600): no verdict by then: roll back (fail safe).
    """

    share: float = Field(default=0.2, gt=0.0, le=1.0)
    min_requests: int = Field(default=50, ge=1)
    max_escalation_increase: float = Field(default=0.05, ge=0.0)
    timeout_s: float = Field(default=600.0, gt=0.0)


@dataclass(frozen=True)
class VersionStats:
    answers: float = 0.0
    escalated: float = 0.0

    @property
    def escalation_rate(self) -> float:
        return self.escalated / self.answers if self.answers else 0.0

    def minus(self, earlier: VersionStats) -> VersionStats:
        return VersionStats(self.answers - earlier.answers, self.escalated - earlier.escalated)


def parse_version_stats(metrics_text: str) -> dict[str, VersionStats]:
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "distillery_student_answers":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            acc = out.setdefault(sample.labels["model_version"], [0.0, 0.0])
            acc[0] += sample.value
            if sample.labels.get("escalated") == "true":
                acc[1] += sample.value
    return {v: VersionStats(a, e) for v, (a, e) in out.items()}


def judge_canary(current: VersionStats, canary: VersionStats, config: CanaryConfig) -> Verdict:
    if canary.answers < config.min_requests:
        return "wait"
    if canary.escalation_rate > current.escalation_rate + config.max_escalation_increase:
        return "rollback"
    return "promote"


class CanaryController:
    """Runs one canary through the registry (replicas follow its pointers) and decides.

    ``fetch_metrics`` returns the gateway's ``/metrics`` text (every ingress replica's, if
    several, concatenated: the parser sums them).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        fetch_metrics: Callable[[], str],
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

    def run(self, version: str) -> tuple[Verdict, VersionStats, VersionStats]:
        current = self._registry.pointers()["current"]
        if current is None:
            raise RegistryError("no current version to compare the canary with")
        base = parse_version_stats(self._fetch())
        self._registry.start_canary(version, self._config.share, actor="canary")
        started = self._clock()
        zero = VersionStats()
        cur = can = zero
        while True:
            self._sleep(self._poll_s)
            now = parse_version_stats(self._fetch())
            cur = now.get(current, zero).minus(base.get(current, zero))
            can = now.get(version, zero).minus(base.get(version, zero))
            verdict = judge_canary(cur, can, self._config)
            detail = (
                f"canary {can.escalation_rate:.3f} escalation over {can.answers:.0f} answers vs "
                f"current {cur.escalation_rate:.3f} over {cur.answers:.0f}"
            )
            if verdict == "promote":
                self._registry.promote(version, reason=f"canary healthy: {detail}", actor="canary")
                return verdict, cur, can
            if verdict == "rollback":
                self._registry.end_canary(reason=f"automatic rollback: {detail}", actor="canary")
                return verdict, cur, can
            if self._clock() - started > self._config.timeout_s:
                self._registry.end_canary(
                    reason=f"automatic rollback: no verdict in time ({detail})", actor="canary"
                )
                return "rollback", cur, can
