"""Builds and runs the Serve application (the builder pattern of ``ray.serve.llm``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from gateway import __version__
from gateway._deployments import GatewayIngress, ModelServer
from gateway.rollout import StudentRollout
from gateway.settings import DistillerySettings, load_settings

__all__ = ["APP_NAME", "app_builder", "apply_rollout", "build_app", "run_app", "start_ray"]

logger = logging.getLogger(__name__)

APP_NAME = "distillery"


def build_app(settings: DistillerySettings, rollout: StudentRollout | None = None) -> Application:
    # Replicas reserve no CPU: on a 2-core box three 1-CPU replicas would not schedule,
    # and torch thread counts (BackendConfig.num_threads) are what really divide the cores.
    opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}
    tiers: dict[str, Any] = {}
    deployment: Any = serve.deployment  # its overloads do not type the builder form
    for tier in ("student", "teacher"):
        cfg = settings.student if tier == "student" else settings.teacher
        extra = {"user_config": (rollout or StudentRollout()).model_dump()} if tier == "student" else {}
        dep = deployment(
            ModelServer, name=tier, num_replicas=cfg.num_replicas, max_ongoing_requests=256, **opts, **extra
        )
        registry = (
            str(settings.resolved_registry_dir) if tier == "student" and settings.follow_registry else None
        )
        tiers[tier] = _pinned(dep, settings).bind(
            tier, cfg, str(settings.tier_dir(tier)), registry, settings.registry_poll_s
        )
    ingress_opts = opts
    if settings.server.ingress_same_loop:
        # The ingress only awaits (handles, a non-blocking feedback queue): Serve's extra
        # user-code thread and router loop cost two cross-thread hops per request there.
        same_loop = {
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        }
        ingress_opts = {"ray_actor_options": {"num_cpus": 0, "runtime_env": {"env_vars": same_loop}}}
    ingress = _pinned(
        deployment(GatewayIngress, name="ingress", max_ongoing_requests=512, **ingress_opts), settings
    )
    app: Application = ingress.bind(tiers["student"], tiers["teacher"], settings)
    return app


def app_builder(args: dict[str, Any]) -> Application:
    """The ``import_path`` of the Serve config file (``serve deploy deploy/serve/distillery.yaml``,
    or a KubeRay ``RayService``): Serve calls it with the config's ``args``.

    ``args`` are ``DistillerySettings`` fields (nested sections as mappings), e.g.
    ``{"cascade": {"teacher_timeout_s": 10}}``; they win over the environment
    (``DISTILLERY_*``), which wins over the YAML settings file named by the optional
    ``config_file`` arg (or ``DISTILLERY_CONFIG_FILE``). Invalid args fail the deploy with
    pydantic's message. Replica counts and autoscaling belong in the Serve config's
    ``deployments`` section (``student``, ``teacher``, ``ingress``), which overrides the code.
    """
    overrides = dict(args)
    config_file = overrides.pop("config_file", None)
    settings = load_settings(Path(config_file) if config_file else None, **overrides)
    return build_app(settings)


def _pinned(dep: Any, settings: DistillerySettings) -> Any:
    """Gives a deployment a version derived from the code and settings.

    ``serve.run`` otherwise stamps every deployment with a random version, so any re-run
    (a hot-swap included) replaces every replica. With a stable version, a run that only
    changes ``user_config`` reconfigures the live replicas in place, as a declarative
    ``serve deploy`` does. ``options(version=..., _internal=True)`` is Serve's internal
    hook for this (Ray is pinned to 2.60 in pyproject.toml; the hot-swap test asserts the
    replicas survive).
    """
    blob = json.dumps([__version__, dep.name, settings.model_dump(mode="json")], sort_keys=True)
    return dep.options(version=hashlib.sha256(blob.encode()).hexdigest()[:16], _internal=True)


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


def apply_rollout(settings: DistillerySettings, rollout: StudentRollout) -> None:
    """Hot-swaps the running student: only its ``user_config`` changes, so Serve calls
    ``reconfigure`` on the live replicas instead of replacing them. Must run where the
    app was deployed from (same code, same settings) or Serve sees a new app version."""
    serve.run(build_app(settings, rollout), name=APP_NAME, route_prefix="/")
