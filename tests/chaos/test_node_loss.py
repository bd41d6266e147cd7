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

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._cluster import NodeCluster, node_cluster
from tests.chaos._traffic import STUDENT_SKILLS, TEACHER_SKILLS, Background, Counts, prompts, send
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENT_BOUND_S = 45.0
STUDENT_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def nodes(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with node_cluster(
        demo_models,
        tmp_path_factory.mktemp("nodes"),
        cascade={
            "student_timeout_s": STUDENT_TIMEOUT_S,
            "teacher_timeout_s": 30,
            "prior": {"enabled": False},
        },
        feedback={"sample_rate": 0.0},
    ) as cluster:
        yield cluster


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
