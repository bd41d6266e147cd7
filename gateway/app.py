"""Builds and runs the Serve application (the builder pattern of ``ray.serve.llm``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from gateway._deployments import GatewayIngress, ModelServer
from gateway.settings import DistillerySettings

__all__ = ["APP_NAME", "build_app", "run_app", "start_ray"]

logger = logging.getLogger(__name__)

APP_NAME = "distillery"


def build_app(settings: DistillerySettings) -> Application:
    # Replicas reserve no CPU: on a 2-core box three 1-CPU replicas would not schedule,
    # and torch thread counts (BackendConfig.num_threads) are what really divide the cores.
    opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}
    tiers: dict[str, Any] = {}
    deployment: Any = serve.deployment  # its overloads do not type the builder form
    for tier in ("student", "teacher"):
        cfg = settings.student if tier == "student" else settings.teacher
        tiers[tier] = deployment(
            ModelServer, name=tier, num_replicas=cfg.num_replicas, max_ongoing_requests=256, **opts
        ).bind(tier, cfg, str(settings.tier_dir(tier)))
    ingress = deployment(GatewayIngress, name="ingress", max_ongoing_requests=512, **opts)
    app: Application = ingress.bind(tiers["student"], tiers["teacher"], settings)
    return app


def start_ray(settings: DistillerySettings, *, num_cpus: int | None = None) -> None:
    """Starts (or joins, via ``RAY_ADDRESS``) Ray and Serve's HTTP proxy."""
    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=True,
            _temp_dir=str((settings.var_dir / "ray").resolve())
            if not os.environ.get("RAY_ADDRESS")
            else None,
        )
    serve.start(
        http_options={
            "host": settings.server.host,
            "port": settings.server.port,
            "request_timeout_s": settings.server.request_timeout_s,
        }
    )


def run_app(settings: DistillerySettings, *, blocking: bool = False) -> None:
    start_ray(settings)
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=blocking)
