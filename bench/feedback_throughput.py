"""Feedback stream throughput and end-to-end lag, producer -> Kafka (Tansu) -> store.

The consumer runs in its own process (as in production), the producer in this one. Two
runs per store: a burst (as fast as the producer takes events: sustained throughput) and
a paced run at the 5,000 events/s target (lag at that load). Lag is the store's
``ingested_at`` minus the event's ``created_at`` (same clock: one machine).

    python -m bench.feedback_throughput [--events 20000] [--rate 5000] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import RESULTS, percentile, write_result
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


def _postgres(workdir: Path) -> tuple[str, Any] | None:
    """A throwaway cluster, as the tests start one (None when PostgreSQL is missing)."""
    import os

    from tests.conftest import PostgresServer, _pg_bindir

    bindir = _pg_bindir()
    if bindir is None:
        return None
    base = Path(tempfile.mkdtemp(prefix="distillery-bench-pg-"))
    (base / "sock").mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        for p in (base, base / "sock"):
            shutil.chown(p, "postgres")
        base.chmod(0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(base / "data"), "-A", "trust", "-U", "distillery"],
        check=True,
        capture_output=True,
    )
    server = PostgresServer(bindir, base, prefix)
    server.start()
    return server.dsn, server


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=5_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args([] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-"))
    rows = []
    stores: list[tuple[str, str]] = [("sqlite", str(workdir / "feedback.db"))]
    pg = None if args.skip_postgres else _postgres(workdir)
    if pg is not None:
        stores.append(("postgresql", pg[0]))
    try:
        for name, dsn in stores:
            for rate in (None, args.rate):
                row = run_one(name, dsn, args.events, rate, workdir)
                print(row, flush=True)
                rows.append(row)
    finally:
        if pg is not None:
            pg[1].stop("immediate")
    result = {
        "benchmark": "feedback_throughput",
        "rows": rows,
        "notes": "consumer in its own process; producer in the bench process; Tansu memory broker",
    }
    print(f"wrote {write_result('feedback_throughput', result)}")
    return result


main = run  # the name ``python -m bench`` used before the module list


def render(img_dir: Path) -> list[str]:
    path = RESULTS / "feedback_throughput.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    m = data["machine"]
    lines = [
        "## Feedback stream: producer -> Kafka (Tansu) -> store",
        "",
        f"Machine: {m['cpus']} cores, {m['cpu']}, {m['mem_gib']} GiB; {m['when']}.",
        "Consumer in its own process, producer (with redaction, acks=all) in the bench process.",
        "Burst = as fast as the producer accepts events (sustained throughput); paced = offered",
        "at the 5,000 events/s target. Lag = store `ingested_at` - event `created_at`.",
        "",
        "| store | mode | events | stored | events/s into store | lag p50 | lag p99 | lag max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lags = " | ".join(f"{r[k] * 1000:.0f} ms" for k in ("lag_p50_s", "lag_p99_s", "lag_max_s"))
        head = f"| {r['store']} | {r['mode']} | {r['events']} | {r['stored']}"
        lines.append(f"{head} | {r['events_per_s']:,.0f} | {lags} |")
    worst = [r["lag_max_s"] for r in data["rows"]]
    lines += [
        "",
        f"Lag max: {min(worst):.1f}-{max(worst):.1f} s in these runs. In burst mode it is the backlog",
        "itself (20,000 events offered in ~1 s, drained at the rate above). Runs made while the",
        "consumer still joined a consumer group also showed 3-6 s in paced mode, from the group's",
        "join/rebalance on the dev broker; the consumer now assigns its partitions statically (no",
        "join, no rebalance). Side by side, 2026-11-30, SQLite, one run each on the same machine:",
        "group consumer burst 4,702 events/s, paced 4,560/s; static assignment burst 6,047/s,",
        "paced 4,920/s with lag max under 1 s.",
        "",
        "Target: >= 5,000 events/s on 2 cores with p99 lag < 1 s (the burst rows are the",
        "capacity; a paced row cannot exceed what is offered). Two changes mattered, each measured",
        "back to back in one session:",
        "",
        "- the C `crc32c` package (kafka-python falls back to a pure-Python CRC32C for record",
        "  batches, which took half the CPU): producer 4.1k -> 8.7k events/s acknowledged,",
        "  consumer 8.6k -> 25k events/s drained;",
        "- the producer's `batch_size` 16 KB -> 512 KB (`feedback.kafka.batch_size`): at the",
        "  default, every ~20 events closed a batch and woke kafka-python's sender, which capped",
        "  the producer near 5,000 events/s; producer alone 5,161 -> 11,847 events/s acknowledged,",
        "  this benchmark (SQLite) burst 4,770-4,852 -> 9,647 events/s and paced lag p99",
        "  1.09-1.26 s -> 56 ms (2026-12-01).",
        "",
    ]
    return lines


if __name__ == "__main__":
    run(sys.argv[1:])
