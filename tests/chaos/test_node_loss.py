"""A Ray node lost under load, on a three-node test cluster on this machine.

``ray.cluster_utils.Cluster`` (Ray's own multi-node harness: one raylet per node, each with
its own resources) starts a head that runs the Serve proxy and two ingress replicas (role
``ingress``), a node for the teacher (role ``teacher``) and a node for the student's two
replicas (role ``student``); ``node_roles`` places each deployment. The student's node is
then killed while requests flow (``remove_node(allow_graceful=False)``: SIGKILL of its
raylet, then of every worker it had): every request must be answered (the student's share
by the teacher, after ``student_timeout_s``) or refused with a clear error, none may hang,
every escalation answered must reach the store, and the student's replicas must come back
once a node of that role returns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos._traffic import STUDENT_SKILLS, TEACHER_SKILLS, Background, Counts, prompts, send
from tests.conftest import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENT_BOUND_S = 45.0
STUDENT_TIMEOUT_S = 3.0
ROLES = {"ingress": "ingress", "student": "student", "teacher": "teacher", "ledger": "ingress"}


class NodeCluster:
    def __init__(self, cluster: Any, nodes: dict[str, Any], stack: Any) -> None:
        self.cluster = cluster
        self.nodes = nodes
        self.stack = stack

    @property
    def url(self) -> str:
        return str(self.stack.url)

    def kill(self, role: str) -> list[int]:
        """SIGKILL of the node's raylet and every worker it started; the pids killed."""
        import psutil

        node = self.nodes.pop(role)
        raylet = node.all_processes["raylet"][0].process.pid
        workers = [p.pid for p in psutil.Process(raylet).children(recursive=True)]
        self.cluster.remove_node(node, allow_graceful=False)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [raylet, *workers]

    def add(self, role: str) -> None:
        self.nodes[role] = self.cluster.add_node(num_cpus=1, resources={role: 1})

    def placement(self) -> dict[str, set[str]]:
        """Deployment name -> the node ids its live replicas run on."""
        from ray.util.state import list_actors

        out: dict[str, set[str]] = {}
        for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
            name = actor.name or ""
            if name.startswith("SERVE_REPLICA::distillery#"):
                out.setdefault(name.split("#")[1], set()).add(actor.node_id)
        return out


@pytest.fixture(scope="module")
def nodes(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from distillery._stack import LocalStack
    from distillery.settings import load_settings

    if ray.is_initialized():  # another module's cluster: this one needs its own
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"ingress": 1}})
    try:
        found = {role: cluster.add_node(num_cpus=1, resources={role: 1}) for role in ("teacher", "student")}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        port = free_port()
        # One proxy, on the head: every node of this cluster shares one host, and a proxy
        # per node would contend for the same port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        var = tmp_path_factory.mktemp("nodes")
        settings = load_settings(
            models_dir=str(demo_models),
            var_dir=str(var),
            server={"port": port, "fast_path": False, "ingress_replicas": 2},
            student_placement="deployment",
            student={"kind": "transformers", "num_replicas": 2, "num_threads": 1},
            teacher={"kind": "transformers", "num_threads": 1},
            node_roles=ROLES,
            cascade={
                "student_timeout_s": STUDENT_TIMEOUT_S,
                "teacher_timeout_s": 30,
                "prior": {"enabled": False},
            },
            feedback={"sample_rate": 0.0},
        )
        with LocalStack(settings, loop=False) as stack:
            yield NodeCluster(cluster, found, stack)
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        cluster.shutdown()


def test_each_deployment_runs_on_its_roles_node(nodes: NodeCluster) -> None:
    placed = nodes.placement()
    head = nodes.cluster.head_node.node_id
    assert placed["ingress"] == {head} and placed["ledger"] == {head}
    assert placed["teacher"] == {nodes.nodes["teacher"].node_id}
    assert placed["student"] == {nodes.nodes["student"].node_id}


def test_the_student_node_killed_under_load(nodes: NodeCluster) -> None:
    import asyncio

    store = nodes.stack.store
    items = prompts(STUDENT_SKILLS, 80, seed=21) + prompts(TEACHER_SKILLS, 20, seed=22)
    with Background(nodes.url, items, concurrency=4, client_timeout_s=CLIENT_BOUND_S) as bg:
        bg.wait_done(20)
        killed_at = time.monotonic()
        killed = nodes.kill("student")
    outcomes = bg.outcomes
    counts = Counts("student node killed under load", outcomes)
    assert counts.n("bad") == 0, counts.bad_details()
    fell_back = [o for o in outcomes if o.kind == "answered" and o.tier == "teacher" and o.escalated]
    assert fell_back, "no request reached the teacher after the student's node died"

    # Every escalation answered is stored (the feedback producer runs in the ingress, on the head).
    ids = {o.request_id for o in counts.escalated if o.request_id}
    assert wait_until(lambda: ids <= set(store.request_ids()), timeout_s=60, every_s=0.5)

    # A node of the student's role returns: Serve places the replicas there again.
    nodes.add("student")

    def student_answers() -> bool:
        [o] = asyncio.run(send(nodes.url, prompts(STUDENT_SKILLS, 1, seed=int(time.time())), concurrency=1))
        return o.kind == "answered" and o.tier == "student" and not o.escalated

    assert wait_until(student_answers, timeout_s=180, every_s=1.0), "the student's replicas did not come back"
    recovery_s = time.monotonic() - killed_at
    assert nodes.placement()["student"] == {nodes.nodes["student"].node_id}
    counts.events_expected, counts.events_lost = len(ids), len(ids - set(store.request_ids()))
    counts.notes = (
        f"killed {len(killed)} processes; teacher answered {len(fell_back)}; back after {recovery_s:.0f}s"
    )
    print("\n" + counts.line())
