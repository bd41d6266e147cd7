"""The admin API: everything that changes what serves, behind the ``admin`` scope.

Every action goes through the model registry, which is the one source of truth the
student replicas follow (within ``registry_poll_s``) and which keeps the audit log; the
actor recorded is the API key's name. Retraining is requested, not run here: the refresh
loop (``distillery loop``) picks the request up at its next tick, so a long TRL run never
occupies a serving replica.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from deploy import ModelRegistry, RolloutController
from gateway.metrics import GatewayMetrics
from gateway.protocol import ErrorResponse

__all__ = ["build_admin_router"]

_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromoteRequest(_Strict):
    version: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=500)


class ReasonRequest(_Strict):
    reason: str = Field(default="", max_length=500)


class CanaryRequest(_Strict):
    version: str = Field(min_length=1, max_length=128)
    share: float = Field(gt=0.0, le=1.0)
    reason: str = Field(default="", max_length=500)


class ThresholdRequest(_Strict):
    threshold: float | None = Field(ge=0.0, le=1.0)
    """``null`` returns every version to its calibrated threshold."""
    reason: str = Field(default="", max_length=500)


class VersionSummary(BaseModel):
    version: str
    created: float | None = None
    parent: str | None = None
    gate_passed: bool | None = None


class RegistryState(BaseModel):
    current: str | None
    previous: str | None
    canary: str | None
    canary_share: float
    threshold_override: float | None
    refresh_pending: bool
    versions: list[VersionSummary]


class RefreshRequested(BaseModel):
    requested_at: float
    reason: str
    actor: str


def _actor(request: Request) -> str:
    return str(getattr(request.state, "principal", "anonymous"))


def build_admin_router(registry: ModelRegistry, metrics: GatewayMetrics) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], responses=_ADMIN_ERRORS)
    rollout = RolloutController(registry)  # every change of what serves goes through it

    def state() -> RegistryState:
        ptr = registry.pointers()
        canary, share = registry.canary()
        versions = [
            VersionSummary(
                version=m.version,
                created=m.manifest.get("created"),
                parent=m.manifest.get("parent"),
                gate_passed=(m.manifest.get("gate") or {}).get("passed"),
            )
            for m in registry.versions()
        ]
        return RegistryState(
            current=ptr["current"],
            previous=ptr["previous"],
            canary=canary,
            canary_share=share,
            threshold_override=registry.threshold_override(),
            refresh_pending=registry.pending_refresh() is not None,
            versions=versions,
        )

    async def act(action: str, fn: Any, *args: Any, **kwargs: Any) -> RegistryState:
        # Registry writes fsync the audit log: off the event loop.
        await asyncio.to_thread(fn, *args, **kwargs)
        metrics.admin_actions.labels(action).inc()
        return await asyncio.to_thread(state)

    @router.get("/models", response_model=RegistryState)
    async def models() -> RegistryState:
        return await asyncio.to_thread(state)

    @router.post("/promote", response_model=RegistryState)
    async def promote(body: PromoteRequest, request: Request) -> RegistryState:
        return await act(
            "promote",
            rollout.promote,
            body.version,
            reason=body.reason or "admin API",
            actor=_actor(request),
        )

    @router.post("/rollback", response_model=RegistryState)
    async def rollback(body: ReasonRequest, request: Request) -> RegistryState:
        return await act(
            "rollback", rollout.rollback, reason=body.reason or "admin API", actor=_actor(request)
        )

    @router.post("/canary", response_model=RegistryState)
    async def start_canary(body: CanaryRequest, request: Request) -> RegistryState:
        return await act("canary", rollout.start_canary, body.version, body.share, actor=_actor(request))

    @router.delete("/canary", response_model=RegistryState)
    async def end_canary(request: Request) -> RegistryState:
        return await act("canary_end", rollout.end_canary, reason="admin API", actor=_actor(request))

    @router.put("/threshold", response_model=RegistryState)
    async def threshold(body: ThresholdRequest, request: Request) -> RegistryState:
        return await act(
            "threshold",
            registry.set_threshold_override,
            body.threshold,
            reason=body.reason or "admin API",
            actor=_actor(request),
        )

    @router.post("/retrain", response_model=RefreshRequested, status_code=202)
    async def retrain(body: ReasonRequest, request: Request) -> RefreshRequested:
        made = await asyncio.to_thread(
            registry.request_refresh, reason=body.reason or "admin API", actor=_actor(request)
        )
        metrics.admin_actions.labels("retrain").inc()
        return RefreshRequested(**made)

    return router
