"""Feedback stream throughput and end-to-end lag, producer -> Kafka (Tansu) -> store.

The consumer runs in its own process (as in production), the producer in this one. Two
runs per store: a burst (as fast as the producer takes events: sustained throughput) and
a paced run at the 5,000 events/s target (lag at that load). Lag is the store's
``ingested_at`` minus the event's ``created_at`` (same clock: one machine).

    python -m bench.feedback_throughput [--events 20000] [--rate 5000] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import percentile, write_result
from feedback import (
    DiskSpool,
    EscalationEvent,
    EscalationProducer,
    FeedbackConfig,
    FeedbackConsumer,
    KafkaConfig,
    TansuBroker,
    open_store,
)

KAFKA = KafkaConfig(linger_ms=5)


def _consume(bootstrap: str, dsn: str, group: str, stop: Any) -> None:
    store = open_store(dsn)
    consumer = FeedbackConsumer(
        KAFKA.model_copy(update={"consumer_group": group}), bootstrap, store, max_records=2000
    )
    while not stop.is_set():
        consumer.poll_once(timeout_ms=100)
    consumer.close()


def _event(run: str, i: int) -> EscalationEvent:
    return EscalationEvent(
        request_id=f"{run}-{i}",
        prompt="shift: abcdef =",
        student_answer="abcdef",
        teacher_answer="bcdefg",
        student_confidence=0.81,
        student_scores={"mean_logprob": 0.81, "min_logprob": 0.4},
        student_version="student-v1",
        teacher_version="teacher-v1",
        route="completions",
        skill="shift",
    )


def _lags(store: Any, run: str) -> list[float]:
    with store._tx() as cur:
        cur.execute(
            "SELECT ingested_at - created_at FROM feedback_events WHERE request_id LIKE "
            + ("%s" if store.placeholder == "%s" else "?"),
            (f"{run}-%",),
        )
        return [float(r[0]) for r in cur.fetchall()]


def run_one(store_name: str, dsn: str, events: int, rate: float | None, workdir: Path) -> dict[str, Any]:
    run = f"{store_name}-{'burst' if rate is None else int(rate)}-{time.time_ns()}"
    if store_name == "sqlite":
        dsn = str(workdir / f"{run}.db")  # a fresh file per run
    broker = TansuBroker(log_path=workdir / "tansu.log").start()
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    consumer = ctx.Process(target=_consume, args=(broker.bootstrap, dsn, f"bench-{run}", stop))
    consumer.start()
    producer = EscalationProducer(
        FeedbackConfig(kafka=KAFKA, queue_size=50_000), broker.bootstrap, DiskSpool(workdir / f"spool-{run}")
    ).start()
    store = open_store(dsn)
    try:
        # Warm-up: the consumer group join takes a few seconds on Tansu; exclude it.
        producer.submit(_event(f"{run}-warm", 0))
        deadline = time.monotonic() + 60
        while f"{run}-warm-0" not in store.request_ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        base = store.count()
        started = time.time()
        interval = None if rate is None else 1.0 / rate
        for i in range(events):
            if interval is not None:
                target = started + i * interval
                delay = target - time.time()
                if delay > 0:
                    time.sleep(delay)
            producer.submit(_event(run, i))
        submitted_s = time.time() - started
        deadline = time.monotonic() + 300
        while store.count() < base + events and time.monotonic() < deadline:
            time.sleep(0.02)
        done_s = time.time() - started
        stored = store.count() - base
        lags = _lags(store, run)
    finally:
        producer.close()
        stop.set()
        consumer.join(30)
        broker.stop()
        store.close()
    return {
        "store": store_name,
        "mode": "burst" if rate is None else f"paced {int(rate)}/s",
        "events": events,
        "stored": stored,
        "offered_rate": round(events / submitted_s, 1),
        "events_per_s": round(stored / done_s, 1),
        "lag_p50_s": round(percentile(lags, 0.5), 4),
        "lag_p99_s": round(percentile(lags, 0.99), 4),
        "lag_max_s": round(max(lags) if lags else float("nan"), 4),
    }


def _postgres() -> Any:
    """A throwaway cluster, as the tests start one (None, said why, where it cannot start)."""
    from feedback._local_postgres import LocalPostgres
    from feedback.errors import StoreUnavailable

    try:
        return LocalPostgres.create("distillery-bench-pg-")
    except StoreUnavailable as exc:
        print(f"PostgreSQL skipped: {exc}", flush=True)
        return None


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=5_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args([] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-"))
    rows = []
    stores: list[tuple[str, str]] = [("sqlite", str(workdir / "feedback.db"))]
    pg = None if args.skip_postgres else _postgres()
    if pg is not None:
        stores.append(("postgresql", pg.dsn))
    try:
        for name, dsn in stores:
            for rate in (None, args.rate):
                row = run_one(name, dsn, args.events, rate, workdir)
                print(row, flush=True)
                rows.append(row)
    finally:
        if pg is not None:
            pg.remove()
    result = {
        "benchmark": "feedback_throughput",
        "rows": rows,
        "notes": "consumer in its own process; producer in the bench process; Tansu memory broker",
    }
    print(f"wrote {write_result('feedback_throughput', result)}")
    return result


main = run  # the name ``python -m bench`` used before the module list


if __name__ == "__main__":
    run(sys.argv[1:])
