"""A full refresh across the nodes, then a Ray node lost under load, on a three-node test
cluster on this machine.

``ray.cluster_utils.Cluster`` (Ray's own multi-node harness: one raylet per node, each with
its own resources) starts a head that runs the Serve proxy and two ingress replicas (role
``ingress``) and a refresh's training and gate (role ``trainer``), a node for the teacher
(role ``teacher``) and a node for the student's two replicas (role ``student``);
``node_roles`` places each deployment and the training task. Model versions live at a
``file://`` URL that stands for object storage; each node pulls a version by digest.

A refresh runs across them: drift in the store, the loop (in this process) hands the
dataset, TRL training and gate to a Ray task on the trainer node, the candidate is
registered at the URL, canaried on the traffic of both ingress replicas and promoted, and
every replica then answers with it. Then the student's node is
then killed while requests flow (``remove_node(allow_graceful=False)``: SIGKILL of its
raylet, then of every worker it had): every request must be answered (the student's share
by the teacher, after ``student_timeout_s``) or refused with a clear error, none may hang,
every escalation answered must reach the store, and the student's replicas must come back
once a node of that role returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench._cluster import NodeCluster, node_cluster
from bench._traffic import Traffic
from tests.chaos._traffic import STUDENT_SKILLS, TEACHER_SKILLS, Background, Counts, prompts, send
from tests.conftest import wait_until

DRIFT_EVENTS = 2000

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
        loop={"nightly_at": None, "canary": True},
        canary={
            "share": 0.5,
            "min_requests": 40,
            "min_audits": 0,
            "min_focus_requests": 20,
            "timeout_s": 400,
        },
    ) as cluster:
        yield cluster


def test_each_deployment_runs_on_its_roles_node(nodes: NodeCluster) -> None:
    placed = nodes.placement()
    head = nodes.cluster.head_node.node_id
    assert placed["ingress"] == {head} and placed["ledger"] == {head}
    assert placed["teacher"] == {nodes.nodes["teacher"].node_id}
    assert placed["student"] == {nodes.nodes["student"].node_id}


class CanaryTraffic:
    """Starts ``traffic`` once the registry names a canary; stops it on exit."""

    def __init__(self, registry: Any, traffic: Traffic) -> None:
        self.registry = registry
        self.traffic = traffic
        self.started = False
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.25):
            if self.registry.canary()[0] is not None:
                self.traffic.__enter__()
                self.started = True
                return

    def __enter__(self) -> CanaryTraffic:
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._watcher.join()
        if self.started:
            self.traffic.__exit__(None, None, None)


def _drift_in_the_store(nodes: NodeCluster, demo_models: Path) -> None:
    """Escalations of the skills the student lacks, as the gateway records them (the real
    teacher's answers), written to the stack's store: the 2,000 a refresh needs would take
    the one-CPU teacher node minutes to answer over HTTP."""
    import asyncio
    import random

    from demo import sample_examples
    from feedback import EscalationEvent
    from router import GenerationRequest
    from router._transformers_backend import TransformersBackend

    teacher = TransformersBackend(demo_models / "teacher", num_threads=1)
    examples = sample_examples(list(TEACHER_SKILLS), DRIFT_EVENTS, random.Random(31))
    answers = []
    t0 = time.monotonic()
    for i in range(0, len(examples), 250):
        batch = [GenerationRequest(prompt=e.prompt, max_tokens=24) for e in examples[i : i + 250]]
        answers += asyncio.run(teacher.generate(batch))
    now = time.time()
    nodes.stack.store.insert(
        [
            EscalationEvent(
                request_id=f"drift-{i}",
                created_at=now - DRIFT_EVENTS + i,
                prompt=e.prompt,
                student_answer="",
                teacher_answer=a.text,
                skill=e.skill,
            )
            for i, (e, a) in enumerate(zip(examples, answers, strict=True))
        ]
    )
    print(f"\n{DRIFT_EVENTS} teacher answers for the store: {time.monotonic() - t0:.0f}s")


@pytest.mark.timeout(1500)
def test_a_full_refresh_runs_across_the_nodes(nodes: NodeCluster, demo_models: Path) -> None:
    from distillery._stack import build_loop
    from distillery._trainer import TrainerRefresher

    settings = nodes.stack.settings
    registry = settings.open_registry()
    before = registry.pointers()["current"]
    _drift_in_the_store(nodes, demo_models)
    loop = build_loop(settings)
    assert isinstance(loop.refresher, TrainerRefresher)

    def mixed(rng: Any) -> str:
        [(prompt, _)] = prompts(STUDENT_SKILLS + TEACHER_SKILLS, 1, seed=rng.randrange(1 << 30))
        return prompt

    # Traffic from the canary's start (training beside serving is the loop benchmark's
    # subject; here it would only slow the test down).
    canary_traffic = CanaryTraffic(registry, Traffic(nodes.url, workers=4, model="distillery", prompt=mixed))
    with canary_traffic:
        t0 = time.monotonic()
        event = loop.tick()
        print(f"\nrefresh across the nodes: {time.monotonic() - t0:.0f}s {event.timings_s}")
    traffic = canary_traffic.traffic
    assert canary_traffic.started, "the loop never started a canary"
    assert (event.trigger, event.result) == ("drift", "promoted"), event
    head = nodes.cluster.head_node.node_id
    assert loop.refresher.nodes == [head], "the training task ran off the trainer node"
    assert {"dataset", "train", "gate", "register", "canary"} <= set(event.timings_s)
    new = registry.pointers()["current"]
    assert new == event.version and new != before
    # The candidate's files are at the URL (object storage), not under the registry dir.
    bucket = Path(settings.registry_url.removeprefix("file://"))  # type: ignore[union-attr]
    assert (bucket / "versions" / new / "manifest.json").is_file()
    assert not (settings.resolved_registry_dir / "versions").exists()
    # The canary was judged on both ingress replicas' evidence.
    evidence = registry.control.scan("evidence")
    canaried = [e for e in evidence.values() if e.value["versions"].get(new, {}).get("answers")]
    assert len(canaried) == 2, {k: e.value for k, e in evidence.items()}
    assert set(traffic.statuses) == {200}, traffic.statuses

    # Every replica serves it: 60 student answers after the swap, all from the new version
    # (with two student replicas behind two ingress replicas, the chance that a replica
    # answered none of 60 is below 1e-17).
    import asyncio

    def all_new() -> bool:
        outs = asyncio.run(send(nodes.url, prompts(STUDENT_SKILLS, 60, seed=5), concurrency=4))
        return all(o.kind == "answered" for o in outs) and all(
            o.model_version == new for o in outs if o.tier == "student"
        )

    assert wait_until(all_new, timeout_s=60, every_s=2.0)


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
