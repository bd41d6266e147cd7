"""The Serve shell around one tier's model, like Ray Serve LLM's ``LLMServer``.

It only wires the Ray-free parts together: the backend slots (``router.BackendSlots``:
current and canary, live swap, retirement), the registry follower
(``deploy.RegistryFollower``), the per-request context check, and ``@serve.batch`` for
backends that do not batch continuously. ``gateway.app.build_app`` wraps it with
``serve.deployment``; with ``student_placement: ingress`` the ingress opens it in its
own process (``ModelServer.open``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve

from deploy import ModelRegistry, RegistryFollower, RolloutState, open_registry
from gateway.settings import GatewaySettings
from router import Backend, BackendConfig, Generation, GenerationRequest, TierItem
from router._context import check_fits
from router._factory import BackendChoice, build_backend_with_choice
from router._slots import BackendSlots, continuous_batching

__all__ = ["ModelServer", "TierSpec", "tier_spec"]


@dataclass(frozen=True)
class TierSpec:
    """What a tier's server is built from (one value, so the three ways of starting one,
    a deployment, the ingress's local student and a benchmark, cannot drift apart)."""

    tier: str
    config: BackendConfig
    default_dir: str
    registry_dir: str | None = None
    registry_poll_s: float = 1.0
    control_dsn: str | None = None
    """The registry's control store (``deploy._control``): None for files under it."""
    control_scope: str = "default"
    registry_url: str | None = None
    """Versions' files at a URL, pulled into ``model_cache_dir`` on this replica's node."""
    model_cache_dir: str | None = None


def tier_spec(settings: GatewaySettings, tier: str) -> TierSpec:
    """A tier's server as these settings describe it; the student follows the registry."""
    follow = tier == "student" and settings.follow_registry
    return TierSpec(
        tier=tier,
        config=settings.student if tier == "student" else settings.teacher,
        default_dir=str(settings.tier_dir(tier)),
        registry_dir=str(settings.resolved_registry_dir) if follow else None,
        registry_poll_s=settings.registry_poll_s,
        control_dsn=settings.control_dsn,
        control_scope=settings.control_scope,
        registry_url=settings.registry_url,
        model_cache_dir=str(settings.resolved_model_cache_dir),
    )


def _registry(spec: TierSpec) -> ModelRegistry | None:
    if spec.registry_dir is None:
        return None
    return open_registry(
        Path(spec.registry_dir),
        spec.control_dsn,
        scope=spec.control_scope,
        files_url=spec.registry_url,
        cache_dir=Path(spec.model_cache_dir) if spec.model_cache_dir else None,
    )


def replica_tag() -> str | None:
    """This Serve replica's unique tag; None outside a replica."""
    try:
        tag: str = serve.get_replica_context().replica_tag
    except Exception:
        return None
    return tag


class ModelServer:
    """One tier's model: checks a request against it, then batches it.

    Hot-swap: the replica follows the registry's pointers; a new rollout loads beside the
    one serving and replaces it (``BackendSlots.apply``), so no request is dropped. With
    a canary, ``canary_share`` of requests go to the candidate, each answer naming its
    ``model_version``. Backends that batch continuously (vLLM) get each request directly:
    the engine batches at every decoding step, where a Serve batch would hold short
    requests until its longest one finished.
    """

    async def __init__(self, spec: TierSpec) -> None:  # type: ignore[misc]  # Serve awaits async constructors
        await self._start(spec)

    @classmethod
    async def open(cls, spec: TierSpec) -> ModelServer:
        """The same server outside Serve (``student_placement: ingress``)."""
        server = cls.__new__(cls)
        await server._start(spec)
        return server

    async def _start(self, spec: TierSpec) -> None:
        self._spec = spec
        model_dir = Path(spec.config.model_dir or spec.default_dir)
        registry = _registry(spec)
        if registry is not None:
            # Start on what the registry serves: loading the configured directory first and
            # then the registry's (the same weights, another path) started two engines.
            model_dir = registry.rollout_state().model_path or model_dir
        self._choice: BackendChoice | None = None
        self._slots = BackendSlots.open(model_dir, self._load, tier=spec.tier)
        for batched in (self._batched, self._batched_canary):
            handler: Any = batched  # serve.batch adds these setters at run time
            handler.set_max_batch_size(spec.config.max_batch_size)
            handler.set_batch_wait_timeout_s(spec.config.batch_wait_timeout_s)
        self._follower = (
            RegistryFollower(registry, self.apply_rollout, poll_s=spec.registry_poll_s).start()
            if registry is not None
            else None
        )

    def _load(self, model_dir: Path) -> Backend:
        cfg = self._spec.config.model_copy(update={"model_dir": model_dir})
        backend, self._choice = build_backend_with_choice(
            cfg, default_dir=model_dir, model_id=self._spec.tier
        )
        return backend

    async def apply_rollout(self, rollout: RolloutState) -> None:
        """The registry follower's one way in (no Serve ``user_config``: a second path
        could undo what the follower applied)."""
        await self._slots.apply(
            rollout.model_path, rollout.canary_path, rollout.canary_share, rollout.threshold_override
        )

    async def generate(self, request: GenerationRequest) -> Generation:
        slot, is_canary = self._slots.pick()
        request = check_fits(slot.backend, request, self._spec.tier)
        if continuous_batching(slot.backend):
            return (await self._slots.generate(slot, [request]))[0]
        if is_canary:
            return await self._batched_canary(request)
        return await self._batched(request)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[TierItem, None]:
        """The streaming cascade's tier stream (``BackendSlots.stream``): called through a
        streaming handle, cancelled by the caller's ``cancel()`` (an escalation, a client
        gone), which cancels the generation in the engine."""
        slot, _ = self._slots.pick()
        request = check_fits(slot.backend, request, self._spec.tier)
        async with aclosing(self._slots.stream(slot, request)) as items:
            async for item in items:
                yield item

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[GenerationRequest]) -> list[Generation]:
        return await self._slots.generate(self._slots.current, requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched_canary(self, requests: list[GenerationRequest]) -> list[Generation]:
        # The canary may have been withdrawn while this batch waited: serve current then.
        return await self._slots.generate(self._slots.canary or self._slots.current, requests)

    def info(self) -> dict[str, Any]:
        slots, current = self._slots, self._slots.current
        cal = current.calibration
        replica = replica_tag()  # None: opened outside Serve, in the ingress's process
        return {
            "tier": self._spec.tier,
            "replica": replica,
            "model_id": current.backend.model_id,
            "version": current.backend.version,
            "canary_version": slots.canary.backend.version if slots.canary is not None else None,
            "canary_share": slots.canary_share,
            "quantization": getattr(current.backend, "quantization", None),
            "canary_quantization": getattr(slots.canary.backend, "quantization", None)
            if slots.canary
            else None,
            "max_context": current.backend.max_context,
            "calibration": {} if cal is None else {"scorer": cal.scorer, "threshold": cal.threshold},
            "threshold_override": slots.threshold_override,
            "pid": os.getpid(),
            "engine_starts": slots.loads,
            "backend": self._choice.model_dump(include={"kind", "reason"}) if self._choice else {},
            "backends_in_flight": slots.in_flight(),
            "retired_versions": slots.retired,
            "engine_stats": _engine_stats(current.backend),
            "control_store": self._follower.status() if self._follower is not None else None,
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
