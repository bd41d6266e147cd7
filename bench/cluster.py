"""One node vs three, and a node lost under load (``bench/results/cluster.json``).

The same stack and load on a one-node Ray cluster (every role on the head, one ingress
replica) and on a three-node one on this machine (head: proxy and two ingress replicas;
a teacher node; a student node; ``bench._cluster``): req/s, p50/p99 and the CPU seconds
every process of the stack spent per request. Then, on the three nodes, the student's node
is SIGKILLed under closed-loop traffic and a node of its role added back 10 s later: a
per-second timeline (sent, answered by each tier, failed, in flight), the requests during
the loss, how many failed, the escalations lost on their way to the store and the time
from the kill until the student answers again.

Nodes on one machine share its two cores: the three-node row measures what the extra
raylets, the second ingress replica and the cross-node hops cost here, not a speed-up.

    python -m bench.cluster [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._common import REPO, percentile, run_load, write_result
from bench._traffic import mixed_demo_prompt

QUICK = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
KILL_AT_S = 8.0
RETURN_AFTER_S = 10.0
STUDENT_TIMEOUT_S = 3.0


def _stack_cpu_s() -> float:
    """CPU seconds of this process and every process it started (the nodes' raylets and
    workers, the broker), so far."""
    import psutil

    me = psutil.Process()
    total = float(sum(me.cpu_times()[:2]))
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def _prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [mixed_demo_prompt(rng) for _ in range(n)]


def measure_load(url: str, work: Path, *, requests: int, concurrency: int) -> dict[str, Any]:
    spec = {
        "url": f"{url}/v1/completions",
        "prompts": _prompts(200, 3),
        "concurrency": concurrency,
        "requests": requests,
        "warmup": 2 * concurrency,
        "model": "distillery",
        "max_tokens": 8,
    }
    cpu0 = _stack_cpu_s()
    out = run_load(spec, work)
    cpu = _stack_cpu_s() - cpu0
    lat = [float(x) for x in out["latencies_s"]]
    ok = int(out["statuses"].get("200", 0))
    if ok < requests:  # a load that failed measures the failure: say so, do not report it
        raise RuntimeError(f"{requests - ok} of {requests} requests failed: {out['statuses']}")
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ok": ok,
        "req_per_s": round(requests / float(out["wall_s"]), 2),
        "p50_ms": round(percentile(lat, 0.5) * 1000, 1),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 1),
        "cpu_ms_per_request": round(cpu / requests * 1000, 1),
        "tiers": out.get("tiers", {}),
    }


@dataclass
class Sent:
    started: float
    ended: float
    status: int | None
    tier: str | None = None
    escalated: bool = False
    request_id: str | None = None


class ClosedLoop:
    """``workers`` threads, each sending the next request as soon as its last one ended."""

    def __init__(self, url: str, workers: int) -> None:
        self.url = url
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=45) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                body = {"model": "distillery", "prompt": mixed_demo_prompt(rng), "max_tokens": 8}
                try:
                    r = client.post(f"{self.url}/v1/completions", json=body)
                except httpx.HTTPError:
                    self.sent.append(Sent(t0, time.monotonic(), None))
                    continue
                sent = Sent(t0, time.monotonic(), r.status_code)
                if r.status_code == 200:
                    data = r.json()
                    info = data["distillery"][0]
                    sent.tier, sent.escalated = info["tier"], bool(info["escalated"])
                    sent.request_id = f"{data['id']}-0"
                self.sent.append(sent)

    def start(self) -> ClosedLoop:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def node_loss(cluster: Any, *, workers: int) -> dict[str, Any]:
    from distillery._stack import LocalStack

    stack: LocalStack = cluster.stack
    load = ClosedLoop(cluster.url, workers).start()
    t0 = time.monotonic()
    time.sleep(KILL_AT_S)
    killed_at = time.monotonic()
    killed = cluster.kill("student")
    time.sleep(RETURN_AFTER_S)
    cluster.add("student")
    returned_at = time.monotonic()
    recovered_at = None
    while time.monotonic() - killed_at < 300:
        back = [s for s in load.sent if s.started > returned_at and s.tier == "student" and not s.escalated]
        if back:
            recovered_at = min(s.ended for s in back)
            break
        time.sleep(0.5)
    time.sleep(5.0)
    load.stop()
    end = recovered_at if recovered_at is not None else time.monotonic()
    during = [s for s in load.sent if killed_at <= s.started <= end or s.started < killed_at < s.ended]
    escalated = {s.request_id for s in load.sent if s.escalated and s.request_id}
    deadline = time.monotonic() + 60
    stored: set[str] = set()
    while time.monotonic() < deadline:
        stored = set(stack.store.request_ids())
        if escalated <= stored:
            break
        time.sleep(1.0)
    timeline = []
    horizon = max(s.ended for s in load.sent) - t0
    for second in range(int(horizon) + 1):
        lo, hi = t0 + second, t0 + second + 1
        ended = [s for s in load.sent if lo <= s.ended < hi]
        timeline.append(
            {
                "t_s": second,
                "answered_student": sum(1 for s in ended if s.status == 200 and s.tier == "student"),
                "answered_teacher": sum(1 for s in ended if s.status == 200 and s.tier == "teacher"),
                "failed": sum(1 for s in ended if s.status != 200),
                "in_flight": sum(1 for s in load.sent if s.started < lo < s.ended),
            }
        )
    return {
        "killed_processes": len(killed),
        "kill_at_s": round(killed_at - t0, 1),
        "node_back_at_s": round(returned_at - t0, 1),
        "recovery_s": None if recovered_at is None else round(recovered_at - killed_at, 1),
        "requests_during_node_loss": len(during),
        "failed_during_node_loss": sum(1 for s in during if s.status != 200),
        "answered_by_teacher_during_node_loss": sum(
            1 for s in during if s.status == 200 and s.tier == "teacher"
        ),
        "requests_total": len(load.sent),
        "failed_total": sum(1 for s in load.sent if s.status != 200),
        "escalations_answered": len(escalated),
        "escalations_lost": len(escalated - stored),
        "timeline": timeline,
    }


def run(argv: list[str] | None = None) -> None:
    from bench._cluster import node_cluster

    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--requests", type=int, default=120 if QUICK else 400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models")
    args = parser.parse_args([] if argv is None else argv)
    models = args.models_dir
    work = REPO / "var" / "bench" / "cluster"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    loss: dict[str, Any] = {}
    cascade = {"student_timeout_s": STUDENT_TIMEOUT_S, "teacher_timeout_s": 30, "prior": {"enabled": False}}
    for nodes, ingress in ((1, 1), (3, 2)):
        var = work / f"nodes-{nodes}-{time.time_ns()}"
        with node_cluster(models, var, nodes=nodes, ingress_replicas=ingress, cascade=cascade) as cluster:
            row = {"nodes": nodes, "ingress_replicas": ingress}
            row.update(measure_load(cluster.url, work, requests=args.requests, concurrency=args.concurrency))
            print(f"[cluster] {row}", flush=True)
            rows.append(row)
            if nodes == 3:
                loss = node_loss(cluster, workers=4)
                print(
                    f"[cluster] node loss: { {k: v for k, v in loss.items() if k != 'timeline'} }", flush=True
                )
    one, three = rows
    summary = {
        "nodes": 3,
        "ingress_replicas": 2,
        "requests_during_node_loss": loss["requests_during_node_loss"],
        "failed_during_node_loss": loss["failed_during_node_loss"],
        "escalations_lost": loss["escalations_lost"],
        "recovery_s": loss["recovery_s"],
        "req_per_s_ratio_3_vs_1": round(three["req_per_s"] / one["req_per_s"], 3),
        "cpu_per_request_ratio_3_vs_1": round(three["cpu_ms_per_request"] / one["cpu_ms_per_request"], 3),
    }
    path = write_result(
        "cluster",
        {
            "options": {
                "requests": args.requests,
                "concurrency": args.concurrency,
                "student_timeout_s": STUDENT_TIMEOUT_S,
            },
            "rows": rows,
            "node_loss": loss,
            "summary": summary,
        },
    )
    print(f"[cluster] wrote {path}: {summary}", flush=True)


if __name__ == "__main__":
    run(sys.argv[1:])
