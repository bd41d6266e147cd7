"""The Markdown section and plot of ``bench.cluster`` (from its results JSON).

Rendering only: nothing here measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import RESULTS


def plot(loss: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t = [row["t_s"] for row in loss["timeline"]]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.stackplot(
        t,
        [row["answered_student"] for row in loss["timeline"]],
        [row["answered_teacher"] for row in loss["timeline"]],
        [row["failed"] for row in loss["timeline"]],
        labels=["answered by the student", "answered by the teacher", "failed"],
        colors=["#4c72b0", "#dd8452", "#c44e52"],
    )
    ax.plot(t, [row["in_flight"] for row in loss["timeline"]], color="black", lw=1, label="in flight")
    ax.axvline(loss["kill_at_s"], color="#c44e52", ls="--", lw=1)
    ax.axvline(loss["node_back_at_s"], color="#55a868", ls="--", lw=1)
    ax.set_xlabel("seconds (red: student node SIGKILLed; green: a student node added)")
    ax.set_ylabel("requests per second")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def render(img_dir: Path) -> list[str]:
    path = RESULTS / "cluster.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    m, s, loss = data["machine"], data["summary"], data["node_loss"]
    lines = [
        "## One node vs three, and a node lost under load",
        "",
        f"`bench/cluster.py`; {m['cpus']} cores, {m['cpu']}; {m['when']}. Ray's `cluster_utils.Cluster`",
        "on this machine: one node holding every role, vs a head (proxy, ingress replicas, shared",
        "ledger), a teacher node and a student node placed by `node_roles`. Both tiers on",
        f"transformers, the student as its own deployment of two replicas; {data['options']['requests']}",
        f"requests at {data['options']['concurrency']} clients, mixed demo prompts. CPU per request: CPU",
        "seconds of every process of the stack (raylets, workers, broker, this process) over the",
        "measured phase, divided by the requests. The nodes share the same two cores: the",
        "three-node row is the cost of the extra raylets, hops and replicas here, not a speed-up.",
        "",
        "| nodes | ingress replicas | req/s | p50 | p99 | CPU per request | answered |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['nodes']} | {r['ingress_replicas']} | {r['req_per_s']:.1f} | {r['p50_ms']:.0f} ms "
            f"| {r['p99_ms']:.0f} ms | {r['cpu_ms_per_request']:.0f} ms | {r['ok']} of {r['requests']} |"
        )
    recovery = "never" if s["recovery_s"] is None else f"{s['recovery_s']:.0f} s"
    back_after = loss["node_back_at_s"] - loss["kill_at_s"]
    lines += [
        "",
        "Node loss (3 nodes, 4 closed-loop clients): the student's node SIGKILLed at "
        f"{loss['kill_at_s']:.0f} s ({loss['killed_processes']} processes), a node of its role "
        f"added {back_after:.0f} s later. {s['requests_during_node_loss']} requests from the kill until "
        f"the student answered again, {s['failed_during_node_loss']} failed "
        f"({loss['answered_by_teacher_during_node_loss']} answered by the teacher); escalations "
        f"answered in the whole run {loss['escalations_answered']}, lost {s['escalations_lost']}; "
        f"the student answered again {recovery} after the kill.",
        "",
        "While the student's role has no node, a call waits (a Serve handle queues it until a",
        "replica exists) until `cascade.student_timeout_s` and the teacher answers it. After",
        "`cascade.student_breaker_failure_threshold` (3) such failures in a row the student tier's",
        "breaker opens and requests go straight to the teacher, one probe every",
        "`student_breaker_cooldown_s` (5 s): the teacher's own rate instead of clients / timeout.",
        *_before_breaker(data),
        "",
    ]
    img = plot(loss, img_dir / "cluster_node_loss.png")
    if img is not None:
        lines += ["![node loss timeline](img/cluster_node_loss.png)", ""]
    return lines


def _before_breaker(data: dict[str, Any]) -> list[str]:
    """The run before the student breaker, kept in the results for the comparison."""
    before = data.get("before_student_breaker")
    if not before:
        return []
    return [
        "",
        f"Before the breaker (same harness, {before['when']}): {before['requests_during_node_loss']} "
        f"requests from the kill until the student answered again, {before['failed_during_node_loss']} "
        f"failed, the student back after {before['recovery_s']:.0f} s. Counts from two runs, not a",
        "ratio: what the breaker changes is the order of magnitude of requests served while the node is",
        "gone. The student's return took longer with it in this run; the likely cause is the teacher,",
        "now answering at its own rate, sharing the two cores with the replacement replica's start.",
    ]
