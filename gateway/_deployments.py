"""Ray Serve shells around the plain core: one model server per tier, and the ingress.

They stay thin on purpose (see STYLE.md): the cascade, the serving logic and the backends
are importable and testable without Ray; these classes only wire handles, batching and
the ASGI app together. ``gateway.app.build_app`` wraps them with ``serve.deployment``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import random
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from common.errors import DistilleryError
from common.model_dir import CALIBRATION_FILE, CalibrationRecord
from deploy import ModelRegistry
from feedback import DiskSpool, EscalationProducer, FeedbackMetrics, claim_spool_dir
from gateway._admin import build_admin_router
from gateway._api import build_api
from gateway._feedback_sink import FeedbackSink, RouteLabeler
from gateway._serving import OpenAIServing
from gateway.metrics import GatewayMetrics
from gateway.rollout import StudentRollout
from gateway.settings import GatewaySettings
from router import (
    Backend,
    BackendConfig,
    CascadeRouter,
    Generation,
    GenerationClient,
    GenerationRequest,
    ThresholdPolicy,
)
from router._factory import build_backend_with_choice
from router.errors import InvalidRequest, PromptTooLong, ReplicaUnavailable

__all__ = ["CALIBRATION_FILE", "GatewayIngress", "ModelServer"]

logger = logging.getLogger(__name__)


class ModelServer:
    """One tier's model: validates a request against the model, then batches it.

    Hot-swap: a ``user_config`` (``StudentRollout``) change calls ``reconfigure`` on the live
    replicas. The new model loads beside the old one and replaces it in one assignment;
    batches already running keep their reference to the old backend and finish on it, so
    no request is dropped. With a canary, a ``canary_share`` of requests goes to the
    candidate, each answer naming its ``model_version`` so live metrics can tell them apart.

    Backends that batch continuously (vLLM: ``continuous_batching``) get each request
    directly, bypassing ``@serve.batch``: the engine's scheduler batches at every decoding
    step, while a Serve batch would hold short requests until its longest one finished and
    queue new ones behind it. A replaced backend is closed once its in-flight requests have
    finished (a vLLM engine shuts down and frees its KV cache).
    """

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        tier: str,
        config: BackendConfig,
        default_dir: str,
        registry_dir: str | None = None,
        registry_poll_s: float = 1.0,
    ) -> None:
        await self._start(tier, config, default_dir, registry_dir, registry_poll_s)

    @classmethod
    async def open(
        cls,
        tier: str,
        config: BackendConfig,
        default_dir: str,
        registry_dir: str | None = None,
        registry_poll_s: float = 1.0,
    ) -> ModelServer:
        """The same server outside Serve: the ingress runs the student in its own process
        this way (``student_placement: ingress``)."""
        server = cls.__new__(cls)
        await server._start(tier, config, default_dir, registry_dir, registry_poll_s)
        return server

    async def _start(
        self,
        tier: str,
        config: BackendConfig,
        default_dir: str,
        registry_dir: str | None,
        registry_poll_s: float,
    ) -> None:
        self._tier = tier
        self._config = config
        self._dir = Path(config.model_dir or default_dir)
        registry = ModelRegistry(Path(registry_dir)) if registry_dir is not None else None
        if registry is not None:
            # Start on what the registry serves: loading the configured directory first and
            # then the registry's (the same weights, another path) started two engines.
            current = registry.rollout_state()["model_dir"]
            if current is not None:
                self._dir = Path(current)
        self._backend, self._choice = build_backend_with_choice(
            config.model_copy(update={"model_dir": self._dir}), default_dir=self._dir, model_id=tier
        )
        self.engine_starts = 1
        """Backends built by this replica (a test asserts one at boot)."""
        self._in_flight: dict[int, int] = {}
        self._idle = asyncio.Condition()
        self._retired: list[str] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._cal = self._calibration(self._dir)
        self._canary_cal: dict[str, Any] = {}
        self._canary: Backend | None = None
        self._canary_dir: Path | None = None
        self._canary_share = 0.0
        self._threshold_override: float | None = None
        self._rng = random.Random()
        for batched in (self._batched, self._batched_canary):
            handler: Any = batched  # serve.batch adds these setters at run time
            handler.set_max_batch_size(config.max_batch_size)
            handler.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        logger.info("%s serving %s (%s)", tier, self._backend.version, self._dir)
        self._watch_task: asyncio.Task[None] | None = None
        if registry is not None:
            self._watch_task = asyncio.get_running_loop().create_task(
                self._follow_registry(registry, registry_poll_s)
            )

    async def _follow_registry(self, registry: ModelRegistry, poll_s: float) -> None:
        """Applies the registry's pointers whenever they change (promote, rollback, canary)."""
        seen: float | None = None
        while True:
            try:
                path = registry.pointers_path
                mtime = path.stat().st_mtime if path.is_file() else None
                if mtime is not None and mtime != seen:
                    state = registry.rollout_state()
                    if state["model_dir"] is not None:
                        await self.reconfigure(state)
                    else:  # nothing registered yet: only the operator's threshold applies
                        self._threshold_override = state["threshold_override"]
                    seen = mtime
            except Exception:
                logger.exception("could not apply the registry's rollout state")
            await asyncio.sleep(poll_s)

    def _load(self, model_dir: Path) -> Backend:
        self.engine_starts += 1
        cfg = self._config.model_copy(update={"model_dir": model_dir})
        backend, self._choice = build_backend_with_choice(cfg, default_dir=model_dir, model_id=self._tier)
        return backend

    async def _loaded(self, model_dir: Path) -> Backend:
        """A new backend, warmed with one request when it is an engine (a fresh vLLM engine's
        first step is slow), so traffic reaches it only once it answers at speed."""
        backend = await asyncio.to_thread(self._load, model_dir)
        if getattr(backend, "continuous_batching", False):
            try:
                await backend.generate([GenerationRequest(prompt="warm up", max_tokens=1)])
            except Exception:
                logger.exception("warm-up request on %s failed", backend.version)
        return backend

    async def _call(self, backend: Backend, requests: list[GenerationRequest]) -> list[Generation]:
        """``backend.generate``, counted so a replaced backend is closed only when idle."""
        key = id(backend)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            return await backend.generate(requests)
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
            async with self._idle:
                self._idle.notify_all()

    async def _retire(self, backends: list[Backend | None]) -> None:
        """Closes backends no longer served, after their in-flight requests finish."""
        live = {id(self._backend), id(self._canary)}
        for old in {id(b): b for b in backends if b is not None and id(b) not in live}.values():
            key = id(old)
            async with self._idle:
                await self._idle.wait_for(lambda: key not in self._in_flight)  # noqa: B023
            try:
                await old.close()
            except Exception:
                logger.exception("closing the replaced backend %s failed", old.version)
            self._retired = [*self._retired, old.version][-8:]
            logger.info("%s closed the replaced backend %s", self._tier, old.version)

    @staticmethod
    def _calibration(model_dir: Path) -> dict[str, Any]:
        record = CalibrationRecord.load(model_dir)
        return {} if record is None else {"scorer": record.scorer, "threshold": record.threshold}

    def _stamp(self, gens: list[Generation], calibration: dict[str, Any]) -> list[Generation]:
        if not calibration and self._threshold_override is None:
            return gens
        update = {
            "calibrated_threshold": calibration.get("threshold"),
            "calibrated_scorer": calibration.get("scorer"),
            "threshold_override": self._threshold_override,
        }
        return [g.model_copy(update=update) for g in gens]

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        rollout = StudentRollout.model_validate(user_config)
        replaced: list[Backend | None] = [self._backend, self._canary]
        if rollout.model_dir is not None and Path(rollout.model_dir) != self._dir:
            if self._canary is not None and Path(rollout.model_dir) == self._canary_dir:
                new = self._canary  # promoting the canary: its loaded engine becomes current
            else:
                new = await self._loaded(Path(rollout.model_dir))
            cal = self._calibration(Path(rollout.model_dir))
            self._backend, self._dir, self._cal = new, Path(rollout.model_dir), cal
            logger.info("%s swapped to %s (%s)", self._tier, new.version, self._dir)
        if rollout.canary_dir is None:
            self._canary, self._canary_dir = None, None
        elif Path(rollout.canary_dir) != self._canary_dir:
            self._canary = await self._loaded(Path(rollout.canary_dir))
            self._canary_dir = Path(rollout.canary_dir)
            self._canary_cal = self._calibration(self._canary_dir)
        self._canary_share = rollout.canary_share if self._canary is not None else 0.0
        self._threshold_override = rollout.threshold_override
        # In the background: the swap is complete; old engines close once drained.
        task = asyncio.get_running_loop().create_task(self._retire(replaced))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def generate(self, request: GenerationRequest) -> Generation:
        use_canary = self._canary is not None and self._rng.random() < self._canary_share
        backend = self._canary if use_canary and self._canary is not None else self._backend
        # Checked per request before batching, so one bad prompt cannot fail a batch. A
        # request the model cannot even render or tokenize is the client's error (400),
        # never a failure of this tier: it must not escalate, retry, or count against the
        # teacher's breaker. Classified here, where the cause is known.
        try:
            prompt_tokens = backend.count_prompt_tokens(request)
        except InvalidRequest:
            raise
        except Exception as exc:
            logger.info("%s cannot tokenize request %s: %r", self._tier, request.request_id, exc)
            raise InvalidRequest(f"the {self._tier} model cannot tokenize this prompt") from None
        limit = backend.max_context
        if prompt_tokens + request.max_tokens > limit:
            raise PromptTooLong(
                f"this model's context is {limit} tokens; the prompt has {prompt_tokens} "
                f"and max_tokens asks for {request.max_tokens} more"
            )
        if getattr(backend, "continuous_batching", False):
            cal = self._canary_cal if use_canary else self._cal
            return self._stamp(await self._call(backend, [request]), cal)[0]
        if use_canary:
            return await self._batched_canary(request)
        return await self._batched(request)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[GenerationRequest]) -> list[Generation]:
        backend, cal = self._backend, self._cal  # one consistent pair across a swap
        return self._stamp(await self._call(backend, requests), cal)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched_canary(self, requests: list[GenerationRequest]) -> list[Generation]:
        if self._canary is None:  # canary withdrawn mid-batch: serve current
            return self._stamp(await self._call(self._backend, requests), self._cal)
        backend, cal = self._canary, self._canary_cal
        return self._stamp(await self._call(backend, requests), cal)

    def info(self) -> dict[str, Any]:
        return {
            "tier": self._tier,
            "replica": serve.get_replica_context().replica_tag,
            "model_id": self._backend.model_id,
            "version": self._backend.version,
            "canary_version": self._canary.version if self._canary is not None else None,
            "canary_share": self._canary_share,
            "max_context": self._backend.max_context,
            "calibration": self._cal,
            "threshold_override": self._threshold_override,
            "pid": os.getpid(),
            "engine_starts": self.engine_starts,
            "backend": self._choice.model_dump(include={"kind", "reason"}),
            "backends_in_flight": sum(self._in_flight.values()),
            "retired_versions": self._retired,
            "engine_stats": _engine_stats(self._backend),
        }


def _engine_stats(backend: Backend) -> dict[str, int] | None:
    """The vLLM scheduler's step statistics (``VLLMBackend.stats``), else None."""
    stats = getattr(backend, "stats", None)
    if stats is None:
        return None
    return {
        "steps": stats.steps,
        "peak_running": stats.peak_running,
        "generation_tokens": stats.generation_tokens,
    }


class _LocalClient:
    """The router's ``GenerationClient`` over a ``ModelServer`` in this process: what it
    raises reaches the router as it was raised, with no Ray wrapper to undo."""

    def __init__(self, server: ModelServer) -> None:
        self._server = server

    async def generate(self, request: GenerationRequest) -> Generation:
        return await self._server.generate(request)


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
        except RayActorError as exc:  # ActorDiedError, ActorUnavailableError
            # The replica died (or is unreachable) under the call: Serve replaces it, so
            # the router may retry (teacher) or fall back (student).
            raise ReplicaUnavailable(f"{type(exc).__name__}: the replica died under the call") from exc
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, DistilleryError):
                raise cause from None
            raise
        return result


def resolve_policy(settings: GatewaySettings, calibration: dict[str, Any]) -> ThresholdPolicy:
    """Configured threshold wins; else the student's calibrated one; else the fallback."""
    cascade = settings.cascade
    if cascade.threshold is not None:
        return ThresholdPolicy(cascade.scorer, cascade.threshold)
    if calibration.get("scorer") == cascade.scorer and "threshold" in calibration:
        return ThresholdPolicy(cascade.scorer, float(calibration["threshold"]))
    return ThresholdPolicy(cascade.scorer, cascade.fallback_threshold)


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


@serve.ingress()
class GatewayIngress:
    """HTTP edge. Owns the metrics registry and the cascade router."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        student: DeploymentHandle[Any] | None,
        teacher: DeploymentHandle[Any],
        settings: GatewaySettings,
    ) -> None:
        self._student = student
        self._teacher = teacher
        self._settings = settings
        self._metrics = GatewayMetrics(pricing=settings.pricing)
        self._local_student: ModelServer | None = None
        student_client: GenerationClient
        if student is None:  # student_placement: ingress
            registry = str(settings.resolved_registry_dir) if settings.follow_registry else None
            self._local_student = await ModelServer.open(
                "student",
                settings.student,
                str(settings.tier_dir("student")),
                registry,
                settings.registry_poll_s,
            )
            student_client = _LocalClient(self._local_student)
        else:
            student_client = _HandleClient(student)
        s_info, t_info = await asyncio.gather(self._student_info(), teacher.info.remote())
        self._versions = {
            "student": (s_info["model_id"], s_info["version"]),
            "teacher": (t_info["model_id"], t_info["version"]),
        }
        policy = resolve_policy(settings, s_info["calibration"])
        self._router = CascadeRouter(
            student_client, _HandleClient(teacher), policy, settings.cascade, observer=self._metrics
        )
        for tier, (model_id, version) in self._versions.items():
            self._metrics.set_model(tier, model_id, version)
        for tier, info in (("student", s_info), ("teacher", t_info)):
            self._metrics.set_backend(tier, info["backend"]["kind"], info["backend"]["reason"])
        self._metrics.threshold.set(policy.threshold)
        self._feedback = _feedback_sink(settings, self._metrics)
        self._serving = OpenAIServing(
            self._router, self._metrics, settings.server, lambda: self._versions, self._feedback
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
        sink: FeedbackSink | None = getattr(self, "_feedback", None)
        if sink is not None:
            sink.close()

    def __serve_build_asgi_app__(self) -> FastAPI:
        registry = ModelRegistry(self._settings.resolved_registry_dir)
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
        pinned = self._settings.cascade.threshold is not None
        calibrated = s_info["calibration"].get("threshold")
        return {
            "student": s_info["version"],
            "canary": s_info.get("canary_version"),
            "canary_share": s_info.get("canary_share", 0.0),
            "teacher": t_info["version"],
            "threshold": self._router.policy.threshold if pinned or calibrated is None else calibrated,
            "scorer": self._router.policy.scorer,
            "threshold_override": s_info.get("threshold_override"),
            "auth": "enabled" if self._settings.auth.enabled else "disabled",
            "student_engine_starts": s_info.get("engine_starts"),
        }
