"""Serving and the loop: ``serve``, ``run``, ``loop``, ``retrain``, ``drift check``, ``config``."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import yaml

from common.errors import ConfigError
from distillery.cli._common import logger, progress_bar, registry_of, serving_factory
from distillery.cli._demo import ensure_models
from distillery.settings import DistillerySettings

__all__ = ["add_stack_commands", "build_loop", "start_consumer", "with_bootstrap"]


def with_bootstrap(
    settings: DistillerySettings, bootstrap: str, *, embedded: bool = False
) -> DistillerySettings:
    """The same settings with the Kafka bootstrap set (a copy: settings are never mutated).

    ``embedded``: the broker keeps its log in memory and stops with the stack, so the
    producers spool what the consumer has not confirmed when they shut down."""
    kafka = settings.feedback.kafka.model_copy(update={"bootstrap": bootstrap})
    update: dict[str, Any] = {"kafka": kafka}
    if embedded:
        update["spool_unconfirmed_on_close"] = True
    feedback = settings.feedback.model_copy(update=update)
    return settings.model_copy(update={"feedback": feedback})


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
    print(flush=True)


def _serve_forever(settings: DistillerySettings, on_stop: list[Any] | None = None) -> int:
    """Serves until SIGTERM or SIGINT, then stops everything in order and returns 0.

    ``on_stop``: what else to stop after Serve has drained (supervisor, loop, consumer,
    broker: see ``distillery._local``)."""
    import ray
    from ray import serve

    from distillery._local import ShutdownSignal
    from gateway.app import run_app

    try:
        run_app(settings)
    except BaseException:  # Serve never came up: stop what was started for it
        _stop_all(on_stop or [])
        ray.shutdown()
        raise
    stop = ShutdownSignal().install()  # after ray.init, which installs its own SIGTERM handler
    _print_banner(settings)
    received = stop.wait()
    print(f"\n{received}: finishing the requests in flight, then stopping", flush=True)
    # Serve first: replicas finish what is in flight; the ingress flushes its producer and
    # spools what the broker did not confirm. Then the rest, in reverse order of start.
    serve.shutdown()  # type: ignore[no-untyped-call]
    _stop_all(on_stop or [])
    ray.shutdown()
    print("stopped", flush=True)
    return 0


def start_consumer(settings: DistillerySettings, metrics_port: int | None) -> Any:
    """The feedback consumer in a background thread of this process."""
    from prometheus_client import start_http_server

    from feedback import FeedbackConsumer, FeedbackMetrics, open_store

    kafka = settings.feedback.kafka
    assert kafka.bootstrap is not None
    metrics = FeedbackMetrics()
    if metrics_port:
        start_http_server(metrics_port, addr=settings.server.host, registry=metrics.registry)
    consumer = FeedbackConsumer(kafka, kafka.bootstrap, open_store(settings.store_dsn), metrics)
    threading.Thread(target=consumer.run, name="feedback-consumer", daemon=True).start()
    return consumer


def build_loop(
    settings: DistillerySettings,
    *,
    canary: bool | None = None,
    interval_s: float | None = None,
    gateway_url: str | None = None,
) -> Any:
    import httpx

    from feedback import open_store
    from retrain import RefreshLoop, ensure_registry
    from router import AgreementMetric

    registry = registry_of(settings)
    ensure_registry(registry, settings.tier_dir("student"))
    url = gateway_url or f"http://{settings.server.host}:{settings.server.port}"
    update: dict[str, Any] = {"sample_rate": settings.feedback.sample_rate}
    if canary is not None:
        update["canary"] = canary
    if interval_s is not None:
        update["check_interval_s"] = interval_s
    return RefreshLoop(
        open_store(settings.store_dsn),
        registry,
        settings.loop.model_copy(update=update),
        workdir=settings.var_dir / "candidates",
        fetch_metrics=lambda: httpx.get(f"{url}/metrics", timeout=10).text,
        scorer=settings.cascade.scorer,
        distill=settings.retrain,
        gate=settings.gate,
        canary=settings.canary,
        agreement=AgreementMetric(settings.agreement),
        backend_factory=serving_factory(settings),
    )


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
    return _serve_forever(settings)


def cmd_run(args: argparse.Namespace, settings: DistillerySettings) -> int:
    """Everything on embedded defaults: the preset's models, broker, consumer, loop, gateway;
    the embedded services supervised (``distillery._local``)."""
    from distillery._local import Service, Supervisor

    ensure_models(settings)
    services: list[Service] = []
    try:
        settings = _start_services(args, settings, services)
    except BaseException:  # a failed start leaves no broker or thread behind
        _stop_all(reversed(services))
        raise
    supervisor = Supervisor(services).start()
    return _serve_forever(settings, on_stop=[supervisor, *reversed(services)])


def _stop_all(services: Iterable[Any]) -> None:
    for service in services:
        try:
            service.stop()
        except Exception:
            logger.exception("stopping %s failed", getattr(service, "name", service))


def _metrics_server(port: int, settings: DistillerySettings, registry: Any, what: str) -> None:
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=settings.server.host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"the {what}'s metrics port {port} is not free ({exc.strerror}); pick another: --metrics-port"
        ) from None


def _start_services(
    args: argparse.Namespace, settings: DistillerySettings, services: list[Any]
) -> DistillerySettings:
    """Starts the embedded broker, consumer and loop, appending each to ``services`` as it
    starts (so a failure part way can stop what already runs); returns the settings with
    the embedded broker's address."""
    from distillery._local import BrokerService, ThreadService
    from feedback import FeedbackConsumer, FeedbackMetrics, TansuBroker, open_store

    if settings.feedback.enabled and not settings.feedback.kafka.bootstrap:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        kafka = settings.feedback.kafka
        broker = BrokerService(
            TansuBroker(log_path=settings.var_dir / "tansu.log"),
            [kafka.topic, kafka.sample_topic, kafka.dead_letter_topic],
            partitions=kafka.partitions,
        )
        broker.start()
        services.append(broker)
        settings = with_bootstrap(settings, broker.broker.bootstrap, embedded=True)
        print(f"embedded Kafka-protocol broker (Tansu) on {broker.broker.bootstrap}")
    if settings.feedback.enabled:
        kafka = settings.feedback.kafka
        assert kafka.bootstrap is not None
        bootstrap: str = kafka.bootstrap
        metrics = FeedbackMetrics()
        _metrics_server(args.metrics_port, settings, metrics.registry, "feedback consumer")

        def consumer() -> tuple[Any, Any]:
            c = FeedbackConsumer(kafka, bootstrap, open_store(settings.store_dsn), metrics)

            def run() -> None:
                try:
                    c.run()
                finally:
                    c.close()

            return run, c.stop

        services.append(ThreadService("feedback consumer", consumer))
        services[-1].start()
        print(f"feedback consumer -> {settings.store_dsn} (metrics on :{args.metrics_port})")
        loop = build_loop(settings)
        _metrics_server(args.metrics_port + 1, settings, loop.metrics.registry, "refresh loop")
        services.append(ThreadService("refresh loop", lambda: (loop.run, loop.stop)))
        services[-1].start()
        print(
            f"refresh loop: drift check every {loop.config.check_interval_s:g}s "
            f"(metrics on :{args.metrics_port + 1}); `distillery demo scenario` tells the story"
        )
    return settings


def cmd_retrain(args: argparse.Namespace, settings: DistillerySettings) -> int:
    """One refresh now: dataset from the store, TRL, gate, registry; then canary or promote."""
    from deploy import RefreshLease
    from retrain import ensure_registry

    registry = registry_of(settings)
    ensure_registry(registry, settings.tier_dir("student"))
    lease = RefreshLease(registry.root, holder="distillery retrain")
    lease.acquire()  # another refresh runs: RefreshInProgress, printed, exit 2
    try:
        return _retrain(args, settings, registry)
    finally:
        lease.release()


def _retrain(args: argparse.Namespace, settings: DistillerySettings, registry: Any) -> int:
    import httpx

    from deploy import CanaryController
    from feedback import open_store
    from retrain import run_refresh
    from router import AgreementMetric

    overrides = {
        k: v for k, v in (("steps", args.steps), ("min_new_examples", args.min_new)) if v is not None
    }
    with progress_bar() as progress:
        outcome = run_refresh(
            open_store(settings.store_dsn),
            registry,
            workdir=settings.var_dir / "candidates",
            suite=None,
            distill_config=settings.retrain.model_copy(update=overrides),
            gate_config=settings.gate,
            scorer=settings.cascade.scorer,
            progress=lambda step, total, loss: progress("candidate", step, total, loss),
            agreement=AgreementMetric(settings.agreement),
            backend_factory=serving_factory(settings),
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
    if args.no_canary:
        registry.promote(outcome.version, reason="gate passed (no canary)", actor="retrain")
        print(f"promoted {outcome.version}")
        return 0
    url = args.gateway_url or f"http://{settings.server.host}:{settings.server.port}"
    controller = CanaryController(
        registry, lambda: httpx.get(f"{url}/metrics", timeout=10).text, settings.canary
    )
    verdict, cur, can = controller.run(outcome.version)
    print(
        f"canary verdict: {verdict} (canary escalation {can.escalation_rate:.1%} over {can.answers:.0f}, "
        f"current {cur.escalation_rate:.1%} over {cur.answers:.0f})"
    )
    return 0 if verdict == "promote" else 1


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
    result = build_loop(settings).check_drift(time.time())
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
        sp.set_defaults(fn=fn)

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
    loop.set_defaults(fn=cmd_loop)

    drift = sub.add_parser("drift", help="drift checks").add_subparsers(dest="drift_cmd", required=True)
    drift.add_parser("check", help="one Evidently drift check on the recent window").set_defaults(
        fn=cmd_drift_check
    )
