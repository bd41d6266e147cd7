"""The Markdown section and plots of ``bench.feedback_throughput`` (from its results JSON).

Rendering only: nothing here measures (``python -m bench --render-only`` rebuilds the report
without running a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from bench._common import RESULTS


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
