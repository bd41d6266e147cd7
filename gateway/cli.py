"""The ``distillery`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from common.logs import configure_logging
from gateway.settings import DistillerySettings, load_settings

__all__ = ["main"]

logger = logging.getLogger("distillery")

SAMPLE_PROMPTS = ("reverse: hello =", "shift: abc =")


def _settings(args: argparse.Namespace) -> DistillerySettings:
    overrides: dict[str, Any] = {}
    if getattr(args, "models_dir", None):
        overrides["models_dir"] = args.models_dir
    server: dict[str, Any] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None):
        server["port"] = args.port
    if server:
        overrides["server"] = server
    return load_settings(args.config, **overrides)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int, float], None]]:
    """A rich progress bar on a TTY; a log line every 100 steps otherwise."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
        ) as bar:
            tasks: dict[str, Any] = {}

            def update(name: str, step: int, total: int, loss: float) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(f"training {name}", total=total, loss=loss)
                bar.update(tasks[name], completed=step, loss=loss)

            yield update
    else:

        def log(name: str, step: int, total: int, loss: float) -> None:
            if step % 100 == 0 or step == total:
                logger.info(
                    "training",
                    extra={"fields": {"model": name, "step": step, "total": total, "loss": round(loss, 5)}},
                )

        yield log


def _print_accuracy_table(results: list[Any]) -> None:
    from demo import ALL_SKILLS, STUDENT_SKILLS

    skills = [s.name for s in ALL_SKILLS]
    print("\nexact match on a fresh sample (300 prompts per skill):")
    print(f"{'model':<9}" + "".join(f"{s:>9}" for s in skills) + f"{'seconds':>10}")
    for r in results:
        cells = ""
        for s in skills:
            mark = "*" if r.name == "student" and s not in STUDENT_SKILLS else " "
            cells += f"{r.accuracy.get(s, float('nan')) * 100:>7.1f}%{mark}"
        print(f"{r.name:<9}{cells}{r.seconds:>10.1f}" + ("" if r.built else "  (cached)"))
    print("* not among the student's skills: the teacher's to answer, and the loop's to distil.")


def cmd_demo_build(args: argparse.Namespace) -> int:
    from demo import build_demo_models

    settings = _settings(args)
    models_dir = settings.resolved_models_dir
    started = time.monotonic()
    with _progress() as progress:
        results = build_demo_models(models_dir, force=args.force, scale=args.scale, progress=progress)
    _print_accuracy_table(results)
    print(f"models in {models_dir.resolve()} ({time.monotonic() - started:.1f}s)")
    if (
        any(r.built for r in results)
        or args.force
        or not (settings.tier_dir("student") / "calibration.json").exists()
    ):
        return cmd_calibrate(args)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from gateway._calibrate import run_calibration

    settings = _settings(args)
    report = run_calibration(
        settings,
        n=getattr(args, "n", 400),
        target_agreement=getattr(args, "target_agreement", None),
        target_escalation_rate=getattr(args, "target_escalation_rate", None),
        prompts_file=getattr(args, "prompts_file", None),
        write=not getattr(args, "dry_run", False),
    )
    print(f"\ncalibration on {report.n} labelled prompts (scorer {report.scorer}):")
    print(
        "  AUROC (student agrees with teacher): "
        + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in report.auroc.items())
    )
    if report.teacher_accuracy is not None:
        print(f"  teacher exact match on the sample: {report.teacher_accuracy:.1%}")
    print(f"  student agrees with teacher on {report.student_agreement:.1%} of the sample")
    print(f"  {'threshold':>12} {'escalation':>11} {'agreement':>10} {'kept acc':>9}")
    step = max(1, len(report.curve) // 12)
    chosen = [p for p in report.curve if p.threshold == report.threshold]
    shown = report.curve[::step] + [report.curve[-1], *chosen]
    for p in sorted({id(p): p for p in shown}.values(), key=lambda p: p.escalation_rate):
        mark = "  <- chosen" if p.threshold == report.threshold else ""
        cells = f"{p.escalation_rate:>10.1%} {p.agreement:>10.1%} {p.student_accuracy_kept:>9.1%}"
        print(f"  {p.threshold:>12.6f} {cells}{mark}")
    print(
        f"chosen threshold {report.threshold:.6f}: escalation {report.escalation_rate:.1%}, "
        f"served agreement {report.agreement:.1%} (target {report.target})"
    )
    if report.path is not None:
        print(f"written to {report.path}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(yaml.safe_dump(json.loads(settings.model_dump_json()), sort_keys=False))
    return 0


def _print_banner(settings: DistillerySettings) -> None:
    url = f"http://{settings.server.host}:{settings.server.port}"
    print(f"\nDistillery is serving at {url}  (Ctrl-C stops it)")
    print(f"  models: {url}/v1/models   health: {url}/healthz   metrics: {url}/metrics")
    for prompt in SAMPLE_PROMPTS:
        body = json.dumps({"model": settings.server.served_model_name, "prompt": prompt, "max_tokens": 16})
        print(f"  curl -s {url}/v1/completions -H 'Content-Type: application/json' -d '{body}'")
    print(flush=True)


def cmd_serve(args: argparse.Namespace, settings: DistillerySettings | None = None) -> int:
    from ray import serve

    from gateway.app import run_app

    settings = settings or _settings(args)
    run_app(settings)
    _print_banner(settings)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()  # type: ignore[no-untyped-call]
    return 0


def _start_consumer(settings: DistillerySettings, metrics_port: int | None) -> Any:
    """The feedback consumer in a background thread of this process."""
    import threading

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


def cmd_feedback_replay_spool(args: argparse.Namespace) -> int:
    """Sends one spool directory's events to Kafka (an orphaned replica's spool slot)."""
    import fcntl

    from feedback import DiskSpool, EscalationProducer

    settings = _settings(args)
    bootstrap = args.bootstrap or settings.feedback.kafka.bootstrap
    if not bootstrap:
        print("set DISTILLERY_FEEDBACK__KAFKA__BOOTSTRAP or --bootstrap", file=sys.stderr)
        return 2
    directory = Path(args.spool_dir)
    if not directory.is_dir():
        print(f"{directory} is not a spool directory", file=sys.stderr)
        return 2
    # The same advisory lock a live producer holds on its slot (claim_spool_dir).
    with (directory / ".owner").open("ab") as owner:
        try:
            fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"{directory} belongs to a running producer, which re-sends it itself", file=sys.stderr)
            return 2
        spool = DiskSpool(directory)
        events = spool.depth
        producer = EscalationProducer(settings.feedback, bootstrap, spool).start()
        delivered = producer.flush(args.timeout)
        producer.close()
        left = DiskSpool(directory).depth
    print(json.dumps({"spool": str(directory), "events": events, "sent": events - left, "left": left}))
    return 0 if delivered and left == 0 else 1


def cmd_feedback_consume(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.bootstrap:
        settings.feedback.kafka.bootstrap = args.bootstrap
    if not settings.feedback.kafka.bootstrap:
        print("set DISTILLERY_FEEDBACK__KAFKA__BOOTSTRAP or --bootstrap", file=sys.stderr)
        return 2
    consumer = _start_consumer(settings, args.metrics_port)
    print(
        f"consuming {settings.feedback.kafka.topic} into {settings.store_dsn} "
        f"(metrics on :{args.metrics_port})",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        consumer.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Everything on embedded defaults: demo models, broker, consumer, gateway."""
    rc = cmd_demo_build(args)
    if rc:
        return rc
    settings = _settings(args)
    if settings.feedback.enabled and not settings.feedback.kafka.bootstrap:
        from feedback import TansuBroker

        settings.var_dir.mkdir(parents=True, exist_ok=True)
        broker = TansuBroker(log_path=settings.var_dir / "tansu.log").start()
        settings.feedback.kafka.bootstrap = broker.bootstrap
        print(f"embedded Kafka-protocol broker (Tansu) on {broker.bootstrap}")
    if settings.feedback.enabled:
        _start_consumer(settings, args.metrics_port)
        print(f"feedback consumer -> {settings.store_dsn} (metrics on :{args.metrics_port})")
        import threading

        from prometheus_client import start_http_server

        loop = _build_loop(settings)
        start_http_server(args.metrics_port + 1, addr=settings.server.host, registry=loop.metrics.registry)
        threading.Thread(target=loop.run, name="refresh-loop", daemon=True).start()
        print(
            f"refresh loop: drift check every {loop.config.check_interval_s:g}s "
            f"(metrics on :{args.metrics_port + 1}); `distillery demo scenario` tells the story"
        )
    return cmd_serve(args, settings)


def _registry(settings: DistillerySettings) -> Any:
    from deploy import ModelRegistry

    return ModelRegistry(settings.resolved_registry_dir)


def cmd_models(args: argparse.Namespace) -> int:
    from retrain import ensure_registry

    settings = _settings(args)
    registry = _registry(settings)
    ensure_registry(registry, settings.tier_dir("student"))
    action = args.models_cmd
    if action == "list":
        ptr = registry.pointers()
        canary, share = registry.canary()
        for m in registry.versions():
            tags = [
                t
                for t, v in (("current", ptr["current"]), ("previous", ptr["previous"]), ("canary", canary))
                if v == m.version
            ]
            gate = m.manifest.get("gate", {})
            verdict = "" if not gate else ("gate passed" if gate.get("passed") else "gate refused")
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.manifest.get("created", 0)))
            print(
                f"{m.version:<40} {created}  parent={m.manifest.get('parent')}  {verdict}  {' '.join(tags)}"
                + (f" ({share:.0%})" if m.version == canary else "")
            )
    elif action == "show":
        print(json.dumps(registry.get(args.version).manifest, indent=2, default=str))
    elif action == "promote":
        registry.promote(args.version, reason=args.reason or "manual", actor="cli")
        print(f"promoted {args.version}; serving replicas follow within {settings.registry_poll_s:g}s")
    elif action == "rollback":
        model = registry.rollback(reason=args.reason or "manual", actor="cli")
        print(f"rolled back to {model.version}; serving replicas follow within {settings.registry_poll_s:g}s")
    elif action == "threshold":
        value = None if args.value == "calibrated" else float(args.value)
        registry.set_threshold_override(value, reason=args.reason or "manual", actor="cli")
        print(f"threshold override: {value if value is not None else 'none (calibrated per version)'}")
    elif action == "refresh":
        registry.request_refresh(reason=args.reason or "manual", actor="cli")
        print("refresh requested: the refresh loop runs it at its next tick")
    elif action == "canary":
        if args.end:
            registry.end_canary(reason=args.reason or "manual", actor="cli")
        else:
            registry.start_canary(args.version, args.share, actor="cli")
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    from gateway.auth import ApiKey, hash_key, new_key

    key = new_key()
    entry = ApiKey(name=args.name, sha256=hash_key(key), scopes=args.scopes or ["inference"])
    print(f"key (shown once; give it to {entry.name}, store it in a secret manager): {key}")
    print("config entry (auth.keys in the YAML, or DISTILLERY_AUTH__KEYS as a JSON list):")
    print(json.dumps(entry.model_dump(exclude_none=True)))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    """One refresh now: dataset from the store, TRL, gate, registry; then canary or promote."""
    import httpx

    from deploy import CanaryConfig, CanaryController
    from feedback import open_store
    from retrain import DistillConfig, GateConfig, demo_regression_suite, ensure_registry, run_refresh

    settings = _settings(args)
    registry = _registry(settings)
    ensure_registry(registry, settings.tier_dir("student"))
    overrides = {
        k: v for k, v in (("steps", args.steps), ("min_new_examples", args.min_new)) if v is not None
    }
    with _progress() as progress:
        outcome = run_refresh(
            open_store(settings.store_dsn),
            registry,
            workdir=settings.var_dir / "candidates",
            suite=demo_regression_suite(),
            distill_config=DistillConfig(**overrides),
            gate_config=GateConfig(),
            scorer=settings.cascade.scorer,
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
            f"  {label:<10} holdout agreement {r.holdout_agreement}  skills {r.per_skill}  "
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
        registry, lambda: httpx.get(f"{url}/metrics", timeout=10).text, CanaryConfig()
    )
    verdict, cur, can = controller.run(outcome.version)
    print(
        f"canary verdict: {verdict} (canary escalation {can.escalation_rate:.1%} over {can.answers:.0f}, "
        f"current {cur.escalation_rate:.1%} over {cur.answers:.0f})"
    )
    return 0 if verdict == "promote" else 1


def _build_loop(
    settings: DistillerySettings,
    *,
    canary: bool = True,
    interval_s: float | None = None,
    gateway_url: str | None = None,
) -> Any:
    import httpx

    from feedback import open_store
    from retrain import LoopConfig, RefreshLoop, demo_regression_suite, ensure_registry

    registry = _registry(settings)
    ensure_registry(registry, settings.tier_dir("student"))
    url = gateway_url or f"http://{settings.server.host}:{settings.server.port}"
    config = LoopConfig(sample_rate=settings.feedback.sample_rate, canary=canary)
    if interval_s is not None:
        config.check_interval_s = interval_s
    return RefreshLoop(
        open_store(settings.store_dsn),
        registry,
        config,
        workdir=settings.var_dir / "candidates",
        suite=demo_regression_suite(),
        fetch_metrics=lambda: httpx.get(f"{url}/metrics", timeout=10).text,
        scorer=settings.cascade.scorer,
    )


def cmd_loop(args: argparse.Namespace) -> int:
    """The refresh loop in the foreground (a Kubernetes Deployment, or beside ``serve``)."""
    from prometheus_client import start_http_server

    settings = _settings(args)
    loop = _build_loop(
        settings, canary=not args.no_canary, interval_s=args.interval, gateway_url=args.gateway_url
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


def cmd_drift_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    loop = _build_loop(settings)
    result = loop.check_drift(time.time())
    print(json.dumps(asdict(result), indent=2, default=str))
    return 0


def cmd_demo_scenario(args: argparse.Namespace) -> int:
    """The story of the loop, on a running ``distillery run`` stack."""
    from gateway._scenario import run_scenario

    settings = _settings(args)
    loop = _build_loop(settings)
    url = f"http://{settings.server.host}:{settings.server.port}"
    out = Path(args.plot or settings.var_dir / "scenario.png")
    report = run_scenario(
        url, loop, drift_requests=args.drift_requests, plot_path=out, pricing=settings.pricing
    )
    (out.with_suffix(".json")).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distillery", description=__doc__)
    p.add_argument("--config", type=Path, default=None, help="YAML settings file")
    p.add_argument("--models-dir", type=Path, default=None)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("config", help="print the effective configuration").set_defaults(fn=cmd_config)

    for name, fn, help_ in (
        ("serve", cmd_serve, "serve the cascade on Ray Serve"),
        ("run", cmd_run, "build demo models if missing, calibrate, serve"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--host")
        sp.add_argument("--port", type=int)
        sp.add_argument("--metrics-port", type=int, default=9101, help="feedback consumer metrics")
        sp.set_defaults(fn=fn, force=False, scale=1.0)

    demo = sub.add_parser("demo", help="the bundled demo domain").add_subparsers(
        dest="demo_cmd", required=True
    )
    build = demo.add_parser("build", help="train the demo teacher and student (CPU, ~3 min)")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.add_argument("--scale", type=float, default=1.0, help="scale the step budget (tests)")
    build.set_defaults(fn=cmd_demo_build)
    scenario = demo.add_parser("scenario", help="drift -> refresh -> fewer escalations, on a running stack")
    scenario.add_argument("--drift-requests", type=int, default=3000)
    scenario.add_argument("--plot", help="PNG path (default var/scenario.png)")
    scenario.set_defaults(fn=cmd_demo_scenario)

    fb = sub.add_parser("feedback", help="the feedback stream").add_subparsers(dest="fb_cmd", required=True)
    consume = fb.add_parser("consume", help="consume escalation events into the feedback store")
    consume.add_argument("--bootstrap", help="Kafka bootstrap servers (else from settings)")
    consume.add_argument("--metrics-port", type=int, default=9101)
    consume.set_defaults(fn=cmd_feedback_consume)
    replay = fb.add_parser("replay-spool", help="send an orphaned spool directory's events to Kafka")
    replay.add_argument("spool_dir", help="one spool slot, e.g. var/spool/3")
    replay.add_argument("--bootstrap", help="Kafka bootstrap servers (else from settings)")
    replay.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for acks")
    replay.set_defaults(fn=cmd_feedback_replay_spool)

    models = sub.add_parser("models", help="the student model registry").add_subparsers(
        dest="models_cmd", required=True
    )
    models.add_parser("list", help="versions, pointers and gate verdicts").set_defaults(fn=cmd_models)
    show = models.add_parser("show", help="one version's manifest (lineage, dataset, gate)")
    show.add_argument("version")
    show.set_defaults(fn=cmd_models)
    promote = models.add_parser("promote", help="serve this version (replicas follow the registry)")
    promote.add_argument("version")
    promote.add_argument("--reason")
    promote.set_defaults(fn=cmd_models)
    rollback = models.add_parser("rollback", help="serve the previous version again")
    rollback.add_argument("--reason")
    rollback.set_defaults(fn=cmd_models)
    canary = models.add_parser("canary", help="send a share of traffic to a version (or --end)")
    canary.add_argument("version", nargs="?")
    canary.add_argument("--share", type=float, default=0.2)
    canary.add_argument("--end", action="store_true")
    canary.add_argument("--reason")
    canary.set_defaults(fn=cmd_models)

    threshold = models.add_parser(
        "threshold", help="pin the escalation threshold for every version ('calibrated' clears it)"
    )
    threshold.add_argument("value", help="a number in [0, 1], or 'calibrated'")
    threshold.add_argument("--reason")
    threshold.set_defaults(fn=cmd_models)
    refresh = models.add_parser("refresh", help="ask the running refresh loop for a refresh at its next tick")
    refresh.add_argument("--reason")
    refresh.set_defaults(fn=cmd_models)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    new_key = keys.add_parser("new", help="make a key; prints it once, and the config entry (digest only)")
    new_key.add_argument("--name", required=True)
    new_key.add_argument("--scope", action="append", choices=["inference", "admin"], dest="scopes")
    new_key.set_defaults(fn=cmd_keys_new)

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

    cal = sub.add_parser("calibrate", help="pick the escalation threshold on a labelled sample")
    target = cal.add_mutually_exclusive_group()
    target.add_argument(
        "--target-agreement", type=float, help="served agreement with the teacher (default 0.995)"
    )
    target.add_argument("--target-escalation-rate", type=float, help="largest share sent to the teacher")
    cal.add_argument("--n", type=int, default=400, help="sample size")
    cal.add_argument(
        "--prompts-file", type=Path, help="JSONL with a 'prompt' per line (default: demo domain)"
    )
    cal.add_argument("--dry-run", action="store_true", help="report only; do not write calibration.json")
    cal.set_defaults(fn=cmd_calibrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    configure_logging(settings.log_level)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
