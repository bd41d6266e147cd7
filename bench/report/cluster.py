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
        f"({loss['answered_by_teacher_during_node_loss']} answered by the teacher after "
        "`cascade.student_timeout_s`); escalations answered in the whole run "
        f"{loss['escalations_answered']}, lost {s['escalations_lost']}; the student answered again "
        f"{recovery} after the kill.",
        "",
        "While the student's role has no node, every request waits out `cascade.student_timeout_s`",
        "(a Serve handle queues a call until a replica exists) before the teacher answers it, so",
        "throughput falls to about clients / timeout: nothing fails, but a breaker on the student",
        "tier (teacher first after repeated student failures, as the teacher's breaker does the other",
        "way) would keep the teacher's own rate; not built yet.",
        "",
    ]
    img = plot(loss, img_dir / "cluster_node_loss.png")
    if img is not None:
        lines += ["![node loss timeline](img/cluster_node_loss.png)", ""]
    return lines
