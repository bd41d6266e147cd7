"""The local stack: broker, store, consumer, refresh loop and the Serve app of one process.

One assembly for ``distillery run`` and ``serve``, the test fixtures and the benchmarks,
so they cannot drift apart and each stops its parts the same way: Serve first (replicas
finish the requests in flight; the ingress flushes its producer and spools what the broker
did not confirm), then the supervisor, then the loop, the consumer and the broker in
reverse order of start, then Ray. A start that fails part way stops what it had started,
so no broker or thread outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from common.errors import ConfigError
from distillery._local import BrokerService, Service, Supervisor, ThreadService
from distillery.settings import DistillerySettings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from deploy import ModelRegistry
    from retrain import DistillConfig, Pair, RefreshLoop, RefreshOutcome

__all__ = ["LocalStack", "build_loop", "refresh_with_settings", "serving_factory", "with_bootstrap"]

logger = logging.getLogger("distillery.stack")


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


def serving_factory(settings: DistillerySettings, tier: str = "student") -> Callable[[Path], Any]:
    """Builds a model directory's backend exactly as the Serve app builds the tier's: the
    gate, the drift reference and calibration judge a model on the engine that serves it."""
    from router import build_backend

    cfg = settings.student if tier == "student" else settings.teacher

    def build(model_dir: Path) -> Any:
        return build_backend(
            cfg.model_copy(update={"model_dir": model_dir}), default_dir=model_dir, model_id=tier
        )

    return build


def refresh_with_settings(
    settings: DistillerySettings,
    registry: ModelRegistry,
    recipe: DistillConfig,
    *,
    suite: Sequence[Pair] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> RefreshOutcome:
    """One refresh (``retrain.run_refresh``) as these settings configure it: their store,
    candidates directory, gate, scorer, agreement metric and serving engine, with ``recipe``
    for training. The trainer node's task and ``distillery retrain`` both run this."""
    from feedback import open_store
    from retrain import run_refresh
    from router import AgreementMetric

    return run_refresh(
        open_store(settings.store_dsn),
        registry,
        workdir=settings.var_dir / "candidates",
        suite=suite,
        distill_config=recipe,
        gate_config=settings.gate,
        scorer=settings.cascade.scorer,
        progress=progress,
        agreement=AgreementMetric(settings.agreement),
        backend_factory=serving_factory(settings),
    )


def live_evidence(settings: DistillerySettings, gateway_url: str) -> Callable[[], Any]:
    """What a canary is judged on: every ingress replica's counts from the registry's
    evidence board; a scrape of ``gateway_url``'s ``/metrics`` only while no replica has
    published there (a gateway of an older release). Once the board has evidence it stays
    the source, so one canary never mixes the two."""
    import httpx

    from deploy import EvidenceBoard

    board = EvidenceBoard(settings.open_registry().control)

    def fetch() -> Any:
        live = board.read()
        return live if live is not None else httpx.get(f"{gateway_url}/metrics", timeout=10).text

    return fetch


def build_loop(
    settings: DistillerySettings,
    *,
    canary: bool | None = None,
    interval_s: float | None = None,
    gateway_url: str | None = None,
    suite: Any = None,
    bootstrap: bool = True,
) -> RefreshLoop:
    """The refresh loop these settings describe, judging canaries on every ingress
    replica's evidence (``live_evidence``; ``gateway_url``, default the settings' server,
    only before any replica published). ``bootstrap``: register and promote
    the configured student when the registry is empty (``ensure_registry``); False for a
    read-only use (``distillery drift check``), which must never write the registry."""

    from distillery._trainer import trainer_refresher
    from feedback import open_store
    from retrain import RefreshLoop, ensure_registry, serving_model
    from router import AgreementMetric

    registry = settings.open_registry()
    if bootstrap:
        ensure_registry(registry, settings.tier_dir("student"))
    else:
        serving_model(registry, settings.tier_dir("student"))  # the lineage check alone
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
        suite=suite,
        fetch_metrics=live_evidence(settings, url),
        scorer=settings.cascade.scorer,
        distill=settings.retrain,
        gate=settings.gate,
        canary=settings.canary,
        agreement=AgreementMetric(settings.agreement),
        backend_factory=serving_factory(settings),
        refresher=trainer_refresher(settings, suite),
        quantize=settings.quantize,
    )


class LocalStack:
    """``with LocalStack(settings, ...) as stack:`` starts, in order, the parts asked for.

    Parameters:
        broker (`bool`): embed a Tansu broker when ``feedback.kafka.bootstrap`` is unset
            (its address is then in ``stack.settings``).
        consumer (`bool`): run the feedback consumer (into ``settings.store_dsn``) on a
            thread of this process.
        loop (`bool`): run the refresh loop on a thread (``stack.loop``).
        serve (`bool`): start Ray and the Serve app (``distillery feedback consume``: no).
        supervise (`bool`): restart a dead broker, consumer or loop with backoff.
        metrics_port (`int | None`): serve the consumer's metrics there and the loop's on
            the next port.
        announce: where the one-line "started X" messages go (``print`` for a console).
    """

    def __init__(
        self,
        settings: DistillerySettings,
        *,
        broker: bool = True,
        consumer: bool = True,
        loop: bool = False,
        serve: bool = True,
        supervise: bool = False,
        metrics_port: int | None = None,
        announce: Callable[[str], None] = logger.info,
    ) -> None:
        self.settings = settings
        self.loop: Any = None
        self._want = {"broker": broker, "consumer": consumer, "loop": loop, "serve": serve}
        self._supervise = supervise
        self._ray_started_at: float | None = None
        self._metrics_port = metrics_port
        self._announce = announce
        self._services: list[Service] = []
        self._supervisor: Supervisor | None = None
        self._serving = False
        self._store: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.server.port}"

    @property
    def store(self) -> Any:
        """The feedback store the consumer writes (opened on first use)."""
        if self._store is None:
            from feedback import open_store

            self._store = open_store(self.settings.store_dsn)
        return self._store

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:  # a failed start leaves no broker, thread or cluster behind
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        if self._want["serve"] and self.settings.follow_registry:
            # Before anything starts: a registry of another preset or student would be
            # served (and retrained on this traffic) without a word.
            from retrain import serving_model

            registry = self.settings.open_registry()
            serving_model(registry, self.settings.tier_dir("student"))
        feedback = self.settings.feedback
        if self._want["broker"] and feedback.enabled and not feedback.kafka.bootstrap:
            self._start_broker()
        if self._want["consumer"] and self.settings.feedback.enabled:
            self._start_consumer()
        if self._want["loop"] and self.settings.feedback.enabled:
            self._start_loop()
        if self._want["serve"]:
            import ray

            from gateway.app import run_app  # Ray and Serve: imported only when serving

            self._serving = True  # from here on close() shuts Serve down: run_app may fail part way
            self._ray_started_at = None if ray.is_initialized() else time.time()
            run_app(self.settings)
        if self._supervise:
            self._supervisor = Supervisor(self._services).start()

    def _start_broker(self) -> None:
        from feedback import TansuBroker

        kafka = self.settings.feedback.kafka
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        broker = BrokerService(
            TansuBroker(log_path=self.settings.var_dir / "tansu.log"),
            [kafka.topic, kafka.sample_topic, kafka.dead_letter_topic],
            partitions=kafka.partitions,
        )
        broker.start()
        self._services.append(broker)
        self.settings = with_bootstrap(self.settings, broker.broker.bootstrap, embedded=True)
        self._announce(f"embedded Kafka-protocol broker (Tansu) on {broker.broker.bootstrap}")

    def _start_consumer(self) -> None:
        from feedback import FeedbackConsumer, FeedbackMetrics, open_store

        settings = self.settings
        kafka = settings.feedback.kafka
        if not kafka.bootstrap:
            raise ConfigError("the feedback consumer needs feedback.kafka.bootstrap (or an embedded broker)")
        bootstrap: str = kafka.bootstrap
        metrics = FeedbackMetrics()
        port = self._metrics_port
        if port:
            _metrics_server(port, settings.server.host, metrics.registry, "feedback consumer")

        def consumer() -> tuple[Callable[[], None], Callable[[], None]]:
            c = FeedbackConsumer(kafka, bootstrap, open_store(settings.store_dsn), metrics)

            def run() -> None:
                try:
                    c.run()
                finally:
                    c.close()

            return run, c.stop

        self._services.append(ThreadService("feedback consumer", consumer))
        self._services[-1].start()
        where = f" (metrics on :{port})" if port else ""
        self._announce(f"feedback consumer -> {settings.store_dsn}{where}")

    def _start_loop(self) -> None:
        loop = build_loop(self.settings)
        port = self._metrics_port
        if port:
            _metrics_server(port + 1, self.settings.server.host, loop.metrics.registry, "refresh loop")
        self.loop = loop
        self._services.append(ThreadService("refresh loop", lambda: (loop.run, loop.stop)))
        self._services[-1].start()
        where = f" (metrics on :{port + 1})" if port else ""
        self._announce(f"refresh loop: drift check every {loop.config.check_interval_s:g}s{where}")

    def close(self) -> None:
        """Stops what runs, in reverse order of start; safe to call twice."""
        leftovers: list[Any] = []
        if self._serving:
            import ray
            from ray import serve

            self._serving = False
            if self._ray_started_at is not None:  # Ray's processes are ours to stop
                leftovers = _started_since(self._ray_started_at)
            if ray.is_initialized():
                _quietly(serve.shutdown, "Serve")
        if self._supervisor is not None:
            _quietly(self._supervisor.stop, "the supervisor")
            self._supervisor = None
        while self._services:
            service = self._services.pop()
            _quietly(service.stop, service.name)
        ray_module = sys.modules.get("ray")  # never imported: nothing of Ray's to stop
        if ray_module is not None and ray_module.is_initialized():
            _quietly(ray_module.shutdown, "Ray")
        _stop_leftovers(leftovers)


def _started_since(since: float) -> list[Any]:
    """This process's descendants started since ``since`` (Ray's: raylet, workers, the
    engines, Serve's HAProxy)."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            # (multiprocessing's resource tracker belongs to this process, not to Ray: it
            # stays until this process exits, and stops with it.)
            if child.create_time() >= since - 1.0 and "resource_tracker" not in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


def _stop_leftovers(processes: list[Any], grace_s: float = 5.0) -> None:
    """What Ray's shutdown left running: when Serve's controller does not stop within its
    30 s, Ray kills the actors and a child such as Serve's HAProxy is orphaned, still
    holding the gateway's ports (the next ``distillery run`` then cannot start). SIGTERM,
    then SIGKILL after ``grace_s``."""
    import psutil

    alive = [p for p in processes if _alive(p)]
    if not alive:
        return
    names = sorted({_name(p) for p in alive})
    logger.warning("stopping %d process(es) Ray's shutdown left running: %s", len(alive), ", ".join(names))
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _alive(p: Any) -> bool:
    import psutil

    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _name(p: Any) -> str:
    try:
        return str(p.name())
    except Exception:
        return str(p.pid)


def _quietly(stop: Callable[[], Any], what: str) -> None:
    try:
        stop()
    except Exception:
        logger.exception("stopping %s failed", what)


def _metrics_server(port: int, host: str, registry: Any, what: str) -> None:
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"the {what}'s metrics port {port} is not free ({exc.strerror}); pick another: --metrics-port"
        ) from None
