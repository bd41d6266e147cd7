"""Serving and the loop: ``serve``, ``run``, ``loop``, ``retrain``, ``drift check``, ``config``."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

import yaml

from distillery._stack import LocalStack, build_loop, refresh_with_settings
from distillery.cli._common import progress_bar, registry_of, roll_out
from distillery.cli._demo import ensure_models
from distillery.settings import DistillerySettings

__all__ = ["add_stack_commands"]


def _sample_requests(settings: DistillerySettings) -> list[tuple[str, dict[str, Any]]]:
    import random

    from distillery._workloads import workload_for

    workload = workload_for(settings.workload)
    rng = random.Random(3)
    items = [workload.sample([r], 1, rng)[0] for r in (workload.old_routes[0], workload.new_routes[0])]
    return [item.http(settings.server.served_model_name, workload.max_tokens) for item in items]


def _print_banner(settings: DistillerySettings) -> None:
    url = f"http://{settings.server.host}:{settings.server.port}"
    print(f"\nDistillery is serving at {url}  (Ctrl-C stops it; preset {settings.preset})")
    print(f"  models: {url}/v1/models   health: {url}/healthz   metrics: {url}/metrics")
    for path, body in _sample_requests(settings):
        print(f"  curl -s {url}{path} -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
    if not settings.auth.enabled:
        print("  auth: DISABLED (no API keys configured: anyone who can reach the port may call it)")
    if not settings.verbose:
        print(f"  logs: {settings.logs_dir}/ (Ray, Serve, vLLM, access log); --verbose prints them here")
    print(flush=True)


def _serve_forever(stack: LocalStack) -> int:
    """Starts ``stack``, serves until SIGTERM or SIGINT, then stops it in order; returns 0."""
    from distillery._local import ShutdownSignal

    # Before the start: a stop asked for while it starts is honoured once it has started
    # (``start_ray`` keeps these handlers across ``ray.init``, which installs its own).
    stop = ShutdownSignal().install()
    stop.starting = True
    with stack:
        stop.starting = False
        _print_banner(stack.settings)
        received = stop.wait()
        print(f"\n{received}: finishing the requests in flight, then stopping", flush=True)
    print("stopped", flush=True)
    return 0


def cmd_config(args: argparse.Namespace, settings: DistillerySettings) -> int:
    if args.serve_env:
        from gateway.app import serve_env

        # For a cluster Distillery joins: its Ray processes must start with these.
        for key, value in serve_env(settings.server).items():
            print(f"{key}={value}")
        return 0
    print(yaml.safe_dump(json.loads(settings.model_dump_json()), sort_keys=False))
    return 0


def cmd_serve(args: argparse.Namespace, settings: DistillerySettings) -> int:
    """The Serve app alone: the broker, consumer and loop run elsewhere (Kubernetes)."""
    return _serve_forever(LocalStack(settings, broker=False, consumer=False, announce=print))


def cmd_run(args: argparse.Namespace, settings: DistillerySettings) -> int:
    """Everything on embedded defaults: the preset's models, broker, consumer, loop, gateway;
    the embedded services supervised (``distillery._local``)."""
    ensure_models(settings)
    stack = LocalStack(settings, loop=True, supervise=True, metrics_port=args.metrics_port, announce=print)
    return _serve_forever(stack)


def cmd_retrain(args: argparse.Namespace, settings: DistillerySettings) -> int:
    """One refresh now: dataset from the store, TRL, gate, registry; then canary or promote."""
    from deploy import RefreshLease
    from retrain import ensure_registry

    registry = registry_of(settings)
    ensure_registry(registry, settings.tier_dir("student"))
    lease = RefreshLease(registry.control, holder="distillery retrain")
    lease.acquire()  # another refresh runs: RefreshInProgress, printed, exit 2
    try:
        return _retrain(args, settings, registry)
    finally:
        lease.release()


def _retrain(args: argparse.Namespace, settings: DistillerySettings, registry: Any) -> int:

    overrides = {
        k: v for k, v in (("steps", args.steps), ("min_new_examples", args.min_new)) if v is not None
    }
    with progress_bar() as progress:
        outcome = refresh_with_settings(
            settings,
            registry,
            settings.retrain.model_copy(update=overrides),
            progress=lambda step, total, loss: progress("candidate", step, total, loss),
        )
    gate = outcome.gate
    print(
        f"\ncandidate {outcome.version}: dataset {outcome.dataset['new']} new"
        f" + {outcome.dataset['replay']} replay, holdout {outcome.dataset['holdout']};"
        f" stage seconds {outcome.timings_s}"
    )
    for label, r in (("current", gate.current), ("candidate", gate.candidate)):
        print(
            f"  {label:<10} holdout agreement {r.holdout_agreement}  routes {r.per_skill}  "
            f"ECE {r.ece:.3f}  escalation {r.escalation_rate:.1%} at {r.threshold:.6f}"
        )
    print(f"gate: {'PASSED' if outcome.passed else 'REFUSED'}: {'; '.join(gate.reasons)}")
    if not outcome.passed:
        return 1
    return roll_out(registry, outcome.version, settings, args, actor="retrain")


def cmd_loop(args: argparse.Namespace, settings: DistillerySettings) -> int:
    """The refresh loop in the foreground (a Kubernetes Deployment, or beside ``serve``)."""
    from prometheus_client import start_http_server

    loop = build_loop(
        settings,
        canary=False if args.no_canary else None,
        interval_s=args.interval,
        gateway_url=args.gateway_url,
    )
    if args.once:
        event = loop.tick()
        print(json.dumps(asdict(event), indent=2, default=str))
        return 0 if event.result in ("promoted", "no_refresh", "skipped") else 1
    start_http_server(args.metrics_port, addr=settings.server.host, registry=loop.metrics.registry)
    print(
        f"refresh loop: drift check every {loop.config.check_interval_s:g}s; metrics on :{args.metrics_port}"
    )
    try:
        loop.run()
    except KeyboardInterrupt:
        loop.stop()
    return 0


def cmd_drift_check(args: argparse.Namespace, settings: DistillerySettings) -> int:
    # A look, not a tick: nothing is registered, promoted or recorded.
    result = build_loop(settings, bootstrap=False).check_drift(time.time(), record=False)
    print(json.dumps(asdict(result), indent=2, default=str))
    return 0


def add_stack_commands(sub: Any) -> None:
    config = sub.add_parser("config", help="print the effective configuration (every section)")
    config.add_argument(
        "--serve-env",
        action="store_true",
        help="print instead the Ray Serve environment server.fast_path needs (KEY=VALUE lines)",
    )
    config.set_defaults(fn=cmd_config)
    for name, fn, help_ in (
        ("serve", cmd_serve, "serve the cascade on Ray Serve"),
        ("run", cmd_run, "build or import the preset's models if missing, calibrate, serve with the loop"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--host")
        sp.add_argument("--port", type=int)
        sp.add_argument("--metrics-port", type=int, default=9101, help="feedback consumer metrics")
        sp.set_defaults(fn=fn, services=True)

    retrain = sub.add_parser("retrain", help="refresh the student now: store -> TRL -> gate -> canary")
    retrain.add_argument("--steps", type=int)
    retrain.add_argument("--min-new", type=int, help="least new escalations to train on")
    retrain.add_argument("--no-canary", action="store_true", help="promote on a passed gate directly")
    retrain.add_argument("--gateway-url", help="where the canary's live metrics are read")
    retrain.set_defaults(fn=cmd_retrain)

    loop = sub.add_parser("loop", help="drift checks, nightly refresh, canary (runs until stopped)")
    loop.add_argument("--interval", type=float, help="seconds between drift checks")
    loop.add_argument("--once", action="store_true", help="one tick, then exit (CronJob)")
    loop.add_argument("--no-canary", action="store_true")
    loop.add_argument("--metrics-port", type=int, default=9102)
    loop.add_argument(
        "--gateway-url",
        help="where the canary reads live metrics (default: server.host:port, which"
        " the metrics listener also binds)",
    )
    loop.set_defaults(fn=cmd_loop, services=True)

    drift = sub.add_parser("drift", help="drift checks").add_subparsers(dest="drift_cmd", required=True)
    drift.add_parser("check", help="one Evidently drift check on the recent window").set_defaults(
        fn=cmd_drift_check
    )
