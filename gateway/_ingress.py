"""The HTTP edge as a Serve deployment: owns the metrics registry, the cascade router and
the feedback producer, and builds the FastAPI app (``__serve_build_asgi_app__``).

The tier boundary lives here too: a handle's Ray wrappers are undone so the router
classifies what a replica raised by type (a client's ``InvalidRequest`` never counts
against a tier).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncGenerator
from typing import Any, NoReturn

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from common.errors import DistilleryError
from deploy import EvidenceBoard, EvidencePublisher
from feedback import DiskSpool, EscalationProducer, FeedbackMetrics, SpoolWriteError, claim_spool_dir
from gateway._admin import build_admin_router
from gateway._api import build_api
from gateway._feedback_sink import FeedbackSink, RouteLabeler
from gateway._ledger import IssuedAnswer, Ledger, RatingsConfig, ReplicatedLedger, ResponseLedger
from gateway._model_server import ModelServer, replica_tag, tier_spec
from gateway._route_prior import PriorLearner
from gateway._serving import OpenAIServing
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from router import (
    NO_PRIOR,
    AgreementMetric,
    AuditVerdict,
    CascadeRouter,
    Generation,
    GenerationClient,
    GenerationRequest,
    RoutePrior,
    ShadowAuditor,
    StreamingCascade,
    ThresholdPolicy,
    TierItem,
)
from router._policy import resolve_threshold
from router.errors import ReplicaUnavailable

__all__ = ["GatewayIngress", "resolve_policy"]

logger = logging.getLogger(__name__)


class _LocalClient:
    """The router's ``GenerationClient`` over a ``ModelServer`` in this process: what it
    raises reaches the router as it was raised, with no Ray wrapper to undo."""

    def __init__(self, server: ModelServer) -> None:
        self._server = server

    async def generate(self, request: GenerationRequest) -> Generation:
        return await self._server.generate(request)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[TierItem, None]:
        return self._server.stream(request)


class _HandleClient:
    """Adapts a Serve handle to the router's ``GenerationClient`` protocol.

    The tier boundary: what a replica raised on purpose (a ``DistilleryError``) arrives as
    Ray's wrapper, whose text is the remote traceback; the original is raised here, so
    the router classifies it by type (a client's ``InvalidRequest`` never counts against
    a tier) and its message stays the one Distillery wrote."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def generate(self, request: GenerationRequest) -> Generation:
        try:
            result: Generation = await self._handle.generate.remote(request)
        except Exception as exc:
            _raise_unwrapped(exc)
        return result

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[TierItem, None]:
        """The replica's ``ModelServer.stream`` through a streaming handle. Closed before
        its end (an escalation, a client gone), it cancels the call, which cancels the
        generation in the replica's engine."""
        # stream=True answers a generator; the stubs say it may be either kind of response.
        call = self._handle.options(stream=True).stream
        response: DeploymentResponseGenerator[TierItem] = call.remote(request)  # type: ignore[assignment]
        finished = False
        try:
            async for item in response:
                yield item
            finished = True
        except Exception as exc:
            finished = True
            _raise_unwrapped(exc)
        finally:
            if not finished:
                response.cancel()  # type: ignore[no-untyped-call]  # Ray's own annotation is missing


def _raise_unwrapped(exc: Exception) -> NoReturn:
    if isinstance(exc, RayActorError):  # ActorDiedError, ActorUnavailableError
        # The replica died (or is unreachable) under the call: Serve replaces it, so the
        # router may retry (teacher) or fall back (student).
        raise ReplicaUnavailable(f"{type(exc).__name__}: the replica died under the call") from exc
    cause = getattr(exc, "cause", None)
    if isinstance(cause, DistilleryError):
        raise cause from None
    raise exc


def resolve_policy(settings: GatewaySettings, calibration: dict[str, Any]) -> ThresholdPolicy:
    """The base policy, for answers that carry no calibration of their own."""
    cascade = settings.cascade
    threshold = resolve_threshold(
        cascade.scorer,
        fallback=cascade.fallback_threshold,
        pinned=cascade.threshold,
        calibrated=calibration.get("threshold"),
        calibrated_scorer=calibration.get("scorer"),
    )
    return ThresholdPolicy(cascade.scorer, threshold)


def _feedback_sink(settings: GatewaySettings, metrics: GatewayMetrics) -> FeedbackSink | None:
    cfg = settings.feedback
    if not cfg.enabled:
        return None
    if not cfg.kafka.bootstrap:
        logger.warning("feedback.kafka.bootstrap is not set: escalation events are NOT recorded")
        return None
    labeler: RouteLabeler | None = None
    if cfg.route_labeler:
        module, _, name = cfg.route_labeler.partition(":")
        labeler = getattr(importlib.import_module(module), name)
    claim = claim_spool_dir(settings.spool_dir)
    producer = EscalationProducer(
        cfg, cfg.kafka.bootstrap, DiskSpool(claim.path), FeedbackMetrics(metrics.registry)
    ).start()
    logger.info("escalation events -> %s (spool %s)", cfg.kafka.bootstrap, claim.path)
    return FeedbackSink(producer, sample_rate=cfg.sample_rate, route_label=labeler)


def _prior_learner(settings: GatewaySettings, metrics: GatewayMetrics) -> PriorLearner | None:
    """The route prior learns from the store's escalations and samples: without feedback
    recorded, or without samples (no rate to learn), there is none."""
    cfg, feedback = settings.cascade.prior, settings.feedback
    if not cfg.enabled or not feedback.enabled or not feedback.kafka.bootstrap or feedback.sample_rate <= 0.0:
        return None
    return PriorLearner(RoutePrior(cfg), settings.store_dsn, feedback.sample_rate, metrics).start()


class _AuditReport:
    """Where the auditor's outcomes go: the metrics, and a disagreement to the feedback stream."""

    def __init__(self, metrics: GatewayMetrics, sink: FeedbackSink | None) -> None:
        self._metrics = metrics
        self._sink = sink

    def audit_verdict(self, verdict: AuditVerdict) -> None:
        self._metrics.audit_verdict(verdict)
        if self._sink is not None:
            with contextlib.suppress(SpoolWriteError):  # counted and logged by the producer
                self._sink.record_audit(verdict)

    def audit_dropped(self, reason: str) -> None:
        self._metrics.audit_dropped(reason)


class _HandleMirror:
    """The shared ledger's Serve handle as a ``LedgerMirror``."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def record_many(self, answers: list[tuple[str, int, IssuedAnswer]]) -> None:
        await self._handle.record_many.remote(answers)

    async def find(self, response_id: str, index: int, principal: str) -> IssuedAnswer | None:
        answer: IssuedAnswer | None = await self._handle.find.remote(response_id, index, principal)
        return answer

    async def mark(self, response_id: str, index: int, fingerprint: str) -> None:
        await self._handle.mark.remote(response_id, index, fingerprint)


def _ledger(config: RatingsConfig, shared: DeploymentHandle[Any] | None) -> Ledger | None:
    """This replica's ledger; mirrored to the shared one when the ingress has several."""
    if not config.enabled:
        return None
    local = ResponseLedger(config)
    if shared is None:
        return local
    return ReplicatedLedger(local, _HandleMirror(shared), config).start()


def _auditor(
    settings: GatewaySettings, router: CascadeRouter, teacher: GenerationClient, report: _AuditReport
) -> ShadowAuditor | None:
    if not settings.audit.enabled:
        return None
    return ShadowAuditor(
        teacher,
        AgreementMetric(settings.agreement),
        settings.audit,
        report,
        teacher_available=lambda: router.breaker.state != "open",
    )


@serve.ingress()
class GatewayIngress:
    """HTTP edge. Owns the metrics registry and the cascade router."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        student: DeploymentHandle[Any] | None,
        teacher: DeploymentHandle[Any],
        settings: GatewaySettings,
        shared_ledger: DeploymentHandle[Any] | None = None,
    ) -> None:
        self._student = student
        self._teacher = teacher
        self._settings = settings
        self._metrics = GatewayMetrics(pricing=settings.pricing)
        self._local_student: ModelServer | None = None
        student_client: _LocalClient | _HandleClient
        if student is None:  # student_placement: ingress
            self._local_student = await ModelServer.open(tier_spec(settings, "student"))
            student_client = _LocalClient(self._local_student)
        else:
            student_client = _HandleClient(student)
        s_info, t_info = await asyncio.gather(self._student_info(), teacher.info.remote())
        self._versions = {
            "student": (s_info["model_id"], s_info["version"]),
            "teacher": (t_info["model_id"], t_info["version"]),
        }
        policy = resolve_policy(settings, s_info["calibration"])
        teacher_client = _HandleClient(teacher)
        self._prior_learner = _prior_learner(settings, self._metrics)
        self._router = CascadeRouter(
            student_client,
            teacher_client,
            policy,
            settings.cascade,
            observer=self._metrics,
            prior=self._prior_learner.prior if self._prior_learner is not None else NO_PRIOR,
        )
        for tier, (model_id, version) in self._versions.items():
            self._metrics.set_model(tier, model_id, version)
        self._metrics.set_gate_agreement(self._versions["student"][1], s_info["calibration"].get("agreement"))
        for tier, info in (("student", s_info), ("teacher", t_info)):
            self._metrics.set_backend(tier, info["backend"]["kind"], info["backend"]["reason"])
        self._metrics.threshold.set(policy.threshold)
        self._feedback = _feedback_sink(settings, self._metrics)
        self._metrics.set_audit_config(settings.audit)
        # The canary's evidence from every replica (deploy._evidence): in the control store
        # of the registry this replica follows, where the controller reads it.
        self._evidence = (
            EvidencePublisher(
                EvidenceBoard(settings.open_registry().control), self._metrics.canary_evidence
            ).start()
            if settings.follow_registry
            else None
        )
        self._auditor = _auditor(
            settings, self._router, teacher_client, _AuditReport(self._metrics, self._feedback)
        )
        self._ledger = _ledger(settings.ratings, shared_ledger)
        self._serving = OpenAIServing(
            self._router,
            self._metrics,
            settings.server,
            lambda: self._versions,
            self._feedback,
            auditor=self._auditor,
            ledger=self._ledger,
            streaming=StreamingCascade(self._router, student_client, teacher_client),
        )
        logger.info("cascade policy: %s >= %.6f keeps the student", policy.scorer, policy.threshold)
        if settings.auth.enabled:
            logger.info("API keys required (%d configured)", len(settings.auth.keys))
        else:
            logger.warning(
                "AUTHENTICATION IS DISABLED: no API keys are configured (auth.keys), so anyone who"
                " can reach this port may call the models AND the admin API. Local development only."
            )

    async def _student_info(self) -> dict[str, Any]:
        if self._local_student is not None:
            return self._local_student.info()
        assert self._student is not None
        info: dict[str, Any] = await self._student.info.remote()
        return info

    def __del__(self) -> None:
        # Serve calls this on graceful replica shutdown: flush events, leave the rest spooled.
        learner: PriorLearner | None = getattr(self, "_prior_learner", None)
        if learner is not None:
            learner.stop()
        sink: FeedbackSink | None = getattr(self, "_feedback", None)
        if sink is not None:
            sink.close()
        evidence: EvidencePublisher | None = getattr(self, "_evidence", None)
        if evidence is not None:
            evidence.stop()

    def __serve_build_asgi_app__(self) -> FastAPI:
        registry = self._settings.open_registry()
        return build_api(
            self._serving,
            self._metrics,
            self._health,
            auth=self._settings.auth,
            limits=self._settings.limits,
            admin=build_admin_router(registry, self._metrics),
        )

    async def _health(self) -> dict[str, Any]:
        s_info, t_info = await asyncio.wait_for(
            asyncio.gather(self._student_info(), self._teacher.info.remote()), timeout=5.0
        )
        cal = s_info["calibration"]
        cascade = self._settings.cascade
        threshold = resolve_threshold(
            cascade.scorer,
            fallback=self._router.policy.threshold,
            pinned=cascade.threshold,
            calibrated=cal.get("threshold"),
            calibrated_scorer=cal.get("scorer"),
        )
        return {
            "student": s_info["version"],
            "canary": s_info.get("canary_version"),
            "canary_share": s_info.get("canary_share", 0.0),
            "teacher": t_info["version"],
            "student_quantization": s_info.get("quantization"),
            "canary_quantization": s_info.get("canary_quantization"),
            "threshold": threshold,
            "scorer": self._router.policy.scorer,
            "threshold_override": s_info.get("threshold_override"),
            "auth": "enabled" if self._settings.auth.enabled else "disabled",
            "student_engine_starts": s_info.get("engine_starts"),
            "teacher_engine_starts": t_info.get("engine_starts"),
            # Which replica instances answer: a redeploy that restarted one shows a new tag.
            "replicas": {
                "ingress": replica_tag(),
                "student": s_info.get("replica") or replica_tag(),
                "teacher": t_info.get("replica"),
            },
            "control_store": s_info.get("control_store"),
            "student_backend": (s_info.get("backend") or {}).get("kind"),
            "route_prior": self._prior_learner.prior.table() if self._prior_learner is not None else None,
        }
