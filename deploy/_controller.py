"""The one place a gated candidate goes live: through a live canary (promoted or rolled
back on its evidence), or promoted directly where there is no canary to run; and the one
place an operator's manual promote, rollback or canary goes through (the admin API and the
CLI), so every change of what serves has one owner.

The refresh loop, ``distillery retrain`` and ``distillery models canary`` each used to
decide this themselves (promote, or build a canary, pick its focus routes, run it, word the
outcome); they now hand the candidate to a ``RolloutController`` and report its
``Rollout``. The registry stays the only state: replicas follow its pointers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from deploy._canary import CanaryConfig, CanaryController, LiveMetrics, Verdict, VersionStats, focus_routes
from deploy._registry import ModelRegistry, RegisteredModel

__all__ = ["Rollout", "RolloutController"]


@dataclass(frozen=True)
class Rollout:
    """What became of a candidate handed to the controller."""

    version: str
    verdict: Verdict
    """``promote`` (it is the current version now) or ``rollback`` (the current one stays)."""
    detail: str
    """The evidence, one line: the canary's numbers, or why there was no canary."""
    reason: str = ""
    """The rule behind the verdict (a rollback's cause, for the next attempt's plan)."""
    canaried: bool = False
    focus: list[str] = field(default_factory=list)
    """The routes the canary held the candidate to (clearly better there)."""
    current: VersionStats = field(default_factory=VersionStats)
    candidate: VersionStats = field(default_factory=VersionStats)
    seconds: float = 0.0

    @property
    def promoted(self) -> bool:
        return self.verdict == "promote"


class RolloutController:
    """``fetch_metrics``: the live counts (``EvidenceBoard.read``, or a ``/metrics`` text);
    None where there is nothing to judge a canary on (the candidate is then promoted on its gate alone, and
    the ``Rollout`` says so)."""

    def __init__(
        self,
        registry: ModelRegistry,
        config: CanaryConfig | None = None,
        fetch_metrics: Callable[[], str | LiveMetrics] | None = None,
        *,
        poll_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._config = config or CanaryConfig()
        self._fetch = fetch_metrics
        self._poll_s = poll_s
        self._sleep = sleep
        self._clock = clock

    @property
    def config(self) -> CanaryConfig:
        return self._config

    # ---- an operator's decisions (admin API, CLI): no verdict to judge, recorded as theirs
    def promote(self, version: str, *, reason: str, actor: str) -> RegisteredModel:
        return self._registry.promote(version, reason=reason, actor=actor)

    def rollback(self, *, reason: str, actor: str) -> RegisteredModel:
        return self._registry.rollback(reason=reason, actor=actor)

    def start_canary(self, version: str, share: float, *, actor: str) -> None:
        """A canary an operator starts and ends by hand (``roll_out`` runs one to a verdict)."""
        self._registry.start_canary(version, share, actor=actor)

    def end_canary(self, *, reason: str, actor: str) -> None:
        self._registry.end_canary(reason=reason, actor=actor)

    def roll_out(
        self,
        version: str,
        *,
        canary: bool = True,
        trained_on: Mapping[str, int] | None = None,
        actor: str,
        reason: str = "gate passed",
    ) -> Rollout:
        """``trained_on``: the candidate's new training examples per route (its focus
        routes are drawn from them); ``reason``: the promotion's audit-log reason when it
        is promoted without a canary."""
        started = self._clock()
        if not canary or self._fetch is None:
            why = reason if canary else f"{reason} (no canary)"
            self._registry.promote(version, reason=why, actor=actor)
            return Rollout(version, "promote", why, seconds=round(self._clock() - started, 2))
        run = CanaryController(
            self._registry,
            self._fetch,
            self._config,
            poll_s=self._poll_s,
            sleep=self._sleep,
            clock=self._clock,
        )
        verdict, current, candidate = run.run(version, focus_routes(dict(trained_on or {}), self._config))
        return Rollout(
            version,
            verdict,
            run.detail,
            run.reason,
            canaried=True,
            focus=run.focus,
            current=current,
            candidate=candidate,
            seconds=round(self._clock() - started, 2),
        )
