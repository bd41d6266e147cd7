"""The refresh loop: drift checks on a schedule, a nightly refresh, canary, and its metrics.

Each ``tick`` checks drift on the recent window; a refresh runs when drift is detected or
the nightly time has come, and only when enough new escalations exist since the last
refresh. A passing candidate goes through a live canary (promote or automatic rollback).
State that must survive a restart (last refresh time, last nightly date) lives in a small
JSON file beside the registry, so a killed loop resumes where it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, Field, field_validator

from deploy import (
    CanaryConfig,
    ControlStoreUnavailable,
    LiveMetrics,
    ModelRegistry,
    RefreshInProgress,
    RefreshLease,
    RegistryError,
    RolloutController,
)
from feedback import FeedbackStore
from retrain._dataset import Pair, load_reference
from retrain._drift import DriftConfig, DriftResult, check_drift, traffic_sample
from retrain._gate import BackendFactory, answer_budget, transformers_factory
from retrain._quantize import QuantizeOutcome, quantize_version
from retrain._refresh import Refresher, RefreshOutcome, run_refresh
from retrain._retry import Failure, RetryPlan, plan_retry
from retrain.config import DistillConfig, GateConfig, QuantizeConfig
from retrain.errors import NotEnoughFeedback
from router import AgreementMetric
from router._quantize import SCHEMES

__all__ = ["EVENTS_FILE", "EVENTS_LOG", "LoopConfig", "LoopEvent", "LoopMetrics", "RefreshLoop", "RemoteLoop"]

logger = logging.getLogger(__name__)


def _says_off(value: str) -> bool:
    """An optional setting turned off from a file or an environment variable (which cannot
    say None): ``null``, ``none``, ``off`` or empty."""
    return value.lower() in ("", "null", "none", "off")


class LoopConfig(BaseModel):
    """When the loop checks and refreshes (how it trains, gates and canaries are the
    ``retrain``, ``gate`` and ``canary`` sections, passed beside it).

    Parameters:
        check_interval_s (`float`, defaults to 300): drift check period.
        nightly_at (`str | None`, defaults to ``"03:00"``): UTC time of the nightly
            refresh; None disables it.
        sample_rate (`float`): the gateway's ``feedback.sample_rate`` (to unbias the window).
        canary (`bool`, defaults to True): live canary before promotion (else promote on gate).
        quantize_after_promotion (`str | None`): after each promotion, make a quantized
            candidate of the new version with this scheme (``router._quantize``), gate it
            against its parent and roll it out the same way (None: never).
        drift (`DriftConfig`): the drift check.
    """

    check_interval_s: float = Field(default=300.0, gt=0)
    nightly_at: str | None = "03:00"

    @field_validator("nightly_at", mode="before")
    @classmethod
    def _hh_mm(cls, value: object) -> object:
        """``null``/``none``/``off``/empty (an environment variable cannot say None) turn
        it off; anything else must be HH:MM, or every tick would fail on it."""
        if isinstance(value, str):
            value = value.strip()
            if _says_off(value):
                return None
            hh, _, mm = value.partition(":")
            if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60 and len(mm) == 2):
                raise ValueError(f"nightly_at must be HH:MM (UTC) or null, not {value!r}")
        return value

    sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    canary: bool = True
    quantize_after_promotion: str | None = None
    drift: DriftConfig = DriftConfig()

    @field_validator("quantize_after_promotion", mode="before")
    @classmethod
    def _known_scheme(cls, value: object) -> object:
        """A scheme ``router._quantize`` knows (the checkpoint ones included), checked at
        start rather than at the first promotion; ``null``/``off``/empty: never."""
        if isinstance(value, str):
            value = value.strip()
            if _says_off(value):
                return None
            if value not in SCHEMES:
                raise ValueError(
                    f"quantize_after_promotion must be one of {', '.join(SCHEMES)}, not {value!r}"
                )
        return value


REFRESH_RESULTS = ("promoted", "refused", "rolled_back", "skipped", "failed")
EVENTS_LOG = "loop_events"
"""Every tick's outcome, appended to the registry's control store: what ``distillery demo
scenario`` and operators read to follow a running loop from another process."""
EVENTS_FILE = f"{EVENTS_LOG}.jsonl"
"""Its file in the embedded (file) control store, beside the registry's pointers."""


class LoopMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r
        self.drift_share = Gauge(
            "distillery_drift_share", "Share of drifted columns at the last check.", registry=r
        )
        self.drift_detected = Gauge(
            "distillery_drift_detected", "1 if the last check found drift.", registry=r
        )
        self.last_check = Gauge(
            "distillery_drift_last_check_timestamp_seconds", "Time of the last drift check.", registry=r
        )
        self.refreshes = Counter(
            "distillery_refreshes_total", "Refresh attempts by result.", ["result"], registry=r
        )
        self.last_success = Gauge(
            "distillery_refresh_last_success_timestamp_seconds",
            "Time of the last promoted refresh.",
            registry=r,
        )
        self.stage_seconds = Histogram(
            "distillery_refresh_stage_seconds",
            "Duration of each refresh stage.",
            ["stage"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        # Every result exported from 0: alerts and dashboard annotations use increase().
        for result in REFRESH_RESULTS:
            self.refreshes.labels(result)


@dataclass
class LoopEvent:
    at: float
    trigger: str
    drift: dict[str, Any] | None
    result: str
    version: str | None = None
    detail: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    plan: str = ""
    """What this attempt changed after the last failure (``retrain._retry``); empty: the
    configured recipe."""


class RefreshLoop:
    def __init__(
        self,
        store: FeedbackStore,
        registry: ModelRegistry,
        config: LoopConfig,
        *,
        workdir: Path,
        suite: Sequence[Pair] | None = None,
        fetch_metrics: Callable[[], str | LiveMetrics] | None,
        scorer: str = "mean_logprob",
        metrics: LoopMetrics | None = None,
        clock: Callable[[], float] = time.time,
        distill: DistillConfig | None = None,
        gate: GateConfig | None = None,
        canary: CanaryConfig | None = None,
        agreement: AgreementMetric | None = None,
        backend_factory: BackendFactory = transformers_factory,
        holder: str = "refresh loop",
        lease_ttl_s: float = 120.0,
        refresher: Refresher | None = None,
        quantize: QuantizeConfig | None = None,
    ) -> None:
        """``suite`` None: each refresh builds it (``retrain.build_suite``).
        ``backend_factory`` builds the engine that evaluates a model directory (the gate,
        the drift reference): the serving factory in production. ``refresher`` None: the
        refresh runs here (``run_refresh`` with this loop's store, registry and configs)."""
        self._store = store
        self._registry = registry
        self._config = config
        self.distill = distill or DistillConfig()
        self.gate = gate or GateConfig()
        self.canary = canary or CanaryConfig()
        self._quantize_config = quantize or QuantizeConfig()
        self._agreement = agreement or AgreementMetric()
        self._factory = backend_factory
        self._lease = RefreshLease(registry.control, holder=holder, ttl_s=lease_ttl_s)
        self._workdir = workdir
        self._suite = suite
        self._fetch = fetch_metrics
        self._scorer = scorer
        self.metrics = metrics or LoopMetrics()
        self._clock = clock
        self._refresher: Refresher = refresher or self._refresh_here
        self._stop = threading.Event()
        self.events: list[LoopEvent] = []
        self._reference_cache: dict[str, tuple[list[str], list[float | None]]] = {}
        self._rollback_reason = ""
        # Survives restarts (the "no successful refresh in 36 h" alert reads it); before any
        # promotion, the serving version's registration time stands in.
        current = registry.current()
        registered = current.manifest.get("created") if current else None
        last_success = self._state().get("last_success_at") or registered
        if last_success:
            self.metrics.last_success.set(float(last_success))

    @property
    def config(self) -> LoopConfig:
        return self._config

    @property
    def refresher(self) -> Refresher:
        return self._refresher

    # ---- persisted state ------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        entry = self._registry.control.read("loop_state")
        return dict(entry.value) if entry is not None else {}

    def _save_state(self, **updates: Any) -> None:
        self._registry.control.put("loop_state", {**self._state(), **updates})

    # ---- one tick -------------------------------------------------------------------
    def check_drift(self, now: float, *, record: bool = True) -> DriftResult:
        """``record`` False: a look only (``distillery drift check``): no drift report
        written, no escalation baseline saved, the registry left as it was."""
        current = self._registry.current()
        pairs = load_reference(current.path) if current else []
        reference = [p.prompt for p in pairs]
        events = self._store.events(since=now - self._config.drift.window_s)
        prompts, confidence, rate = traffic_sample(events, self._config.sample_rate, random.Random(int(now)))
        reference_conf: list[float | None] | None = None
        if current is not None and pairs:
            reference, reference_conf = self._reference(current.version, current.path, pairs)
        # "Normal" escalation rate of a version: its first drift-free window after promotion.
        baselines: dict[str, float] = self._state().get("baseline_escalation", {})
        version = current.version if current else ""
        result = check_drift(
            reference,
            prompts,
            self._config.drift,
            escalation_rate=rate,
            expected_escalation_rate=baselines.get(version),
            reference_confidence=reference_conf,
            current_confidence=confidence if reference_conf is not None else None,
            out_dir=self._registry.root / "drift-reports" if record else None,
            seed=int(now),
        )
        if (
            record
            and version
            and version not in baselines
            and rate is not None
            and not result.drifted
            and result.columns
        ):
            self._save_state(baseline_escalation={**baselines, version: rate})
        self.metrics.drift_share.set(result.drift_share)
        self.metrics.drift_detected.set(1 if result.drifted else 0)
        self.metrics.last_check.set(now)
        return result

    def _reference(
        self, version: str, model_dir: Path, pairs: list[Pair]
    ) -> tuple[list[str], list[float | None]]:
        """The version's own confidence on (a sample of) its training prompts, once per
        version, served by the engine that serves it."""
        if version not in self._reference_cache:
            import asyncio

            from router import confidence_logprobs, generate_requests, get_scorer

            sample = random.Random(0).sample(pairs, min(len(pairs), self._config.drift.max_rows))
            budget = answer_budget(model_dir, self.gate.max_new_tokens)

            async def run() -> list[Any]:
                backend = self._factory(model_dir)
                try:
                    requests = [p.to_request(budget) for p in sample]
                    return await generate_requests(backend, requests, batch_size=self.gate.batch_size)
                finally:
                    await backend.close()

            gens = asyncio.run(run())
            score = get_scorer(self._scorer)
            confs: list[float | None] = [score(confidence_logprobs(g, sampled=False)) for g in gens]
            self._reference_cache = {version: ([p.prompt for p in sample], confs)}
        return self._reference_cache[version]

    def _nightly_due(self, now: float) -> bool:
        if not self._config.nightly_at:
            return False
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        hh, mm = (int(x) for x in self._config.nightly_at.split(":"))
        return at.time() >= dt.time(hh, mm) and self._state().get("last_nightly") != at.date().isoformat()

    def tick(self) -> LoopEvent:
        now = self._clock()
        t0 = time.monotonic()
        drift = self.check_drift(now)
        drift_s = round(time.monotonic() - t0, 2)
        nightly = self._nightly_due(now)
        # An operator's request (admin API / `distillery models refresh`) forces a refresh.
        requested = self._registry.take_refresh_request()
        trigger = "drift" if drift.drifted else ("nightly" if nightly else "")
        trigger = "manual" if requested is not None else trigger
        drift_info = {
            "drifted": drift.drifted,
            "share": drift.drift_share,
            "reason": drift.reason,
            "escalation_rate": drift.escalation_rate,
        }
        if not trigger:
            return self._record(LoopEvent(now, "check", drift_info, "no_refresh", detail=drift.reason))
        if nightly:
            self._save_state(last_nightly=dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat())
        since = self._state().get("last_refresh_at")
        new = self._store.count(kind="escalation", since=since)
        if new < self.distill.min_new_examples and trigger != "manual":
            self.metrics.refreshes.labels("skipped").inc()
            return self._record(
                LoopEvent(
                    now,
                    trigger,
                    drift_info,
                    "skipped",
                    detail=f"{new} new escalations < {self.distill.min_new_examples}",
                )
            )
        try:
            self._lease.acquire()
        except RefreshInProgress as exc:
            self.metrics.refreshes.labels("skipped").inc()
            logger.warning("refresh not started: %s", exc)
            return self._record(LoopEvent(now, trigger, drift_info, "skipped", detail=str(exc)))
        try:
            return self._refresh(now, trigger, drift_info, drift_s)
        finally:
            self._lease.release()

    def _attempt(self) -> tuple[DistillConfig, RetryPlan | None]:
        """This refresh's recipe: the configured one, changed by what the last failure
        showed (``retrain._retry``)."""
        saved = self._state().get("last_failure")
        plan = plan_retry(Failure.model_validate(saved) if saved else None, self.distill)
        if plan is None:
            return self.distill, None
        current = self._registry.current()
        resolved = self.distill.resolved(current.path if current else None)
        return plan.apply(resolved), plan

    def _remember(self, event: LoopEvent, plan: RetryPlan | None, reasons: list[str]) -> LoopEvent:
        """Keeps a failure for the next attempt (and says in the event what that will
        change); a promotion forgets it."""
        if event.result == "promoted":
            self._save_state(last_failure=None)
            return event
        if event.result not in ("refused", "rolled_back") or event.version is None:
            return event
        failure = Failure(
            version=event.version,
            result="refused" if event.result == "refused" else "rolled_back",
            reasons=reasons,
            attempt=plan.attempt if plan else 1,
            step_factor=plan.step_factor if plan else 1.0,
            replay_share=plan.replay_share if plan else None,
        )
        self._save_state(last_failure=failure.model_dump())
        following = plan_retry(failure, self.distill)
        if following is not None:
            event.detail = f"{event.detail} | next: {following.summary}"
            logger.warning("refresh %s: %s", event.result, event.detail)
        return event

    def _refresh(self, now: float, trigger: str, drift_info: dict[str, Any], drift_s: float) -> LoopEvent:
        recipe, plan = self._attempt()
        if plan is not None:
            logger.info("refresh recipe: %s", plan.summary)
        try:
            outcome = self._refresher(recipe)
        except NotEnoughFeedback as exc:
            self.metrics.refreshes.labels("skipped").inc()
            return self._record(LoopEvent(now, trigger, drift_info, "skipped", detail=str(exc)))
        # Per stage, in order: drift_check, dataset, train, gate, register (+ canary below).
        outcome.timings_s = {"drift_check": drift_s, **outcome.timings_s}
        for stage, seconds in outcome.timings_s.items():
            self.metrics.stage_seconds.labels(stage).observe(seconds)
        self._save_state(last_refresh_at=now)
        event = self._roll_out(now, trigger, drift_info, outcome)
        event.plan = plan.summary if plan else ""
        reasons = outcome.reasons if event.result == "refused" else [self._rollback_reason]
        event = self._record(self._remember(event, plan, reasons))
        scheme = self._config.quantize_after_promotion
        if event.result == "promoted" and event.version is not None and scheme:
            self._record(self.quantize(event.version, scheme, now=now))
        return event

    def _refresh_here(self, recipe: DistillConfig) -> RefreshOutcome:
        return run_refresh(
            self._store,
            self._registry,
            workdir=self._workdir,
            suite=self._suite,
            distill_config=recipe,
            gate_config=self.gate,
            scorer=self._scorer,
            agreement=self._agreement,
            backend_factory=self._factory,
        )

    def quantize(self, version: str, scheme: str, *, now: float | None = None) -> LoopEvent:
        """``version``'s quantized candidate, gated and rolled out like any (the tick calls
        it after each promotion when ``quantize_after_promotion`` names a scheme)."""
        now = self._clock() if now is None else now
        try:
            outcome = quantize_version(
                self._registry,
                version,
                scheme,
                workdir=self._workdir,
                gate_config=self.gate,
                store=self._store,
                suite=self._suite,
                scorer=self._scorer,
                agreement=self._agreement,
                backend_factory=self._factory,
                holdout_fraction=self.distill.holdout_fraction,
                quantize_config=self._quantize_config,
            )
        except Exception as exc:  # the promotion stands; only its quantized twin failed
            logger.exception("quantizing %s with %s failed", version, scheme)
            return LoopEvent(now, "quantize", {}, "failed", version, f"{type(exc).__name__}: {exc}"[:300])
        return self._roll_out(now, "quantize", {}, outcome)

    def _roll_out(
        self, now: float, trigger: str, drift_info: dict[str, Any], outcome: RefreshOutcome | QuantizeOutcome
    ) -> LoopEvent:
        if not outcome.passed:
            self.metrics.refreshes.labels("refused").inc()
            return LoopEvent(
                now,
                trigger,
                drift_info,
                "refused",
                outcome.version,
                "; ".join(outcome.reasons),
                outcome.timings_s,
            )
        trained_on = outcome.dataset.get("new_by_skill", {}) if isinstance(outcome, RefreshOutcome) else {}
        rollout = RolloutController(self._registry, self.canary, self._fetch).roll_out(
            outcome.version,
            canary=self._config.canary,
            trained_on=trained_on,
            actor="loop",
            reason=f"{trigger}: gate passed",
        )
        timings, detail = outcome.timings_s, "gate passed"
        if rollout.canaried:
            timings = {**timings, "canary": rollout.seconds}
            self.metrics.stage_seconds.labels("canary").observe(rollout.seconds)
            detail = rollout.detail
            self._rollback_reason = rollout.reason
            if not rollout.promoted:
                self.metrics.refreshes.labels("rolled_back").inc()
                return LoopEvent(now, trigger, drift_info, "rolled_back", outcome.version, detail, timings)
        self.metrics.refreshes.labels("promoted").inc()
        self.metrics.last_success.set(self._clock())
        self._save_state(last_success_at=self._clock())
        return LoopEvent(now, trigger, drift_info, "promoted", outcome.version, detail, timings)

    def _record(self, event: LoopEvent) -> LoopEvent:
        self.events.append(event)
        logger.info("loop tick", extra={"fields": asdict(event)})
        try:
            self._registry.control.append(EVENTS_LOG, json.loads(json.dumps(asdict(event), default=str)))
        except (OSError, RegistryError):
            logger.exception("could not append to the loop's events in %s", self._registry.control.describe())
        return event

    def run(self) -> None:
        """Ticks every ``check_interval_s``, and at once when a refresh is requested
        (``distillery models refresh``, the admin API, ``distillery demo scenario``)."""
        paused = False  # the control store was unreachable at the last tick
        while not self._stop.is_set():
            try:
                self.tick()
                if paused:
                    logger.warning("control store reachable again; refreshes resumed")
                    paused = False
            except ControlStoreUnavailable as exc:
                # Not a failed refresh: nothing can be read or written until it returns
                # (and every change is a compare-and-swap, so nothing is left half-done).
                if not paused:
                    paused = True
                    logger.warning("control store unreachable; refreshes paused: %s", exc)
            except Exception as exc:
                logger.exception("refresh loop tick failed")
                self.metrics.refreshes.labels("failed").inc()
                # In the events too: whoever follows them (``RemoteLoop``, the scenario, an
                # operator) learns of the failure instead of waiting for an outcome.
                detail = f"{type(exc).__name__}: {exc}"[:300]
                self._record(LoopEvent(self._clock(), "error", None, "failed", detail=detail))
            deadline = time.monotonic() + self._config.check_interval_s
            while not self._stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(ControlStoreUnavailable):
                    if self._registry.pending_refresh() is not None:
                        break
                self._stop.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    def stop(self) -> None:
        self._stop.set()


class RemoteLoop:
    """A refresh loop running in another process, driven through the registry: ``tick``
    asks for a refresh (as ``distillery models refresh`` does) and waits for the loop's
    outcome in its events file. So a second process never runs a second refresh."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        timeout_s: float = 3600.0,
        poll_s: float = 1.0,
        reason: str = "requested",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._reason = reason
        self._clock = clock

    def tick(self) -> LoopEvent:
        asked = self._clock()
        self._registry.request_refresh(reason=self._reason, actor="remote")
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            for row in self._registry.control.entries(EVENTS_LOG):
                answers = row.get("trigger") == "manual" or row.get("result") == "failed"
                if answers and float(row.get("at", 0)) >= asked - 1.0:
                    return LoopEvent(**row)
            time.sleep(self._poll_s)
        raise TimeoutError(f"the running refresh loop did not answer within {self._timeout_s:g}s")
