"""Two ingress replicas behind one route, with the student in each ingress and as its own
deployment: both replicas serve, the canary's evidence counts every answer whichever
replica gave it, and an answer is rated through whichever replica the rating reaches.

Each placement is a third Serve app on the live stack's Ray (as ``secure_stack`` is): its
own registry, the same broker and store. The student is the transformers engine (two vLLM
engines on CI's two cores would cost minutes and prove nothing more here)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.integration

REQUESTS = 40


@pytest.fixture(scope="module", params=["ingress", "deployment"])
def replicated(
    request: pytest.FixtureRequest, live_stack: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from ray import serve

    from distillery.settings import DistillerySettings
    from gateway.app import build_app
    from retrain import ensure_registry

    placement = request.param
    var = tmp_path_factory.mktemp(f"replicated-{placement}")
    base: DistillerySettings = live_stack.settings
    settings = DistillerySettings.model_validate(
        {
            **base.model_dump(),
            "var_dir": var,
            "registry_dir": var / "registry",
            "student_placement": placement,
            "student": {**base.student.model_dump(), "kind": "transformers"},
            "server": {**base.server.model_dump(), "ingress_replicas": 2},
        }
    )
    registry = settings.open_registry()
    ensure_registry(registry, settings.tier_dir("student"))
    name = f"replicated-{placement}"
    serve.run(build_app(settings), name=name, route_prefix=f"/{name}")
    yield type(
        "Replicated", (), {"url": f"{live_stack.url}/{name}", "registry": registry, "settings": settings}
    )
    serve.delete(name)


def test_two_replicas_serve_count_every_answer_and_rate_from_either(replicated: Any) -> None:
    from deploy import EvidenceBoard

    ids = []
    with httpx.Client(timeout=60) as client:
        for i in range(REQUESTS):
            r = client.post(
                f"{replicated.url}/v1/completions",
                json={
                    "model": "distillery",
                    "prompt": f"reverse: {'abcdefgh'[: 3 + i % 5]} =",
                    "max_tokens": 8,
                },
            )
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])

    # Evidence: each replica published its own counts; their sum is every answer.
    control = replicated.registry.control
    board = EvidenceBoard(control)

    def counted() -> float:
        live = board.read()
        return sum(s.answers for s in live.versions.values()) if live is not None else 0.0

    assert wait_until(lambda: counted() >= REQUESTS, timeout_s=30, every_s=0.5), counted()
    assert counted() == REQUESTS
    serving = [
        e
        for e in control.scan("evidence").values()
        if any(c["answers"] for c in e.value["versions"].values())
    ]
    assert len(serving) == 2, "both ingress replicas answered (else this test proves nothing)"

    # Ratings: every answer, through whichever replica the proxy picks, once each. In
    # another order than the answers: a round-robin balancer sending the i-th rating
    # where it sent the i-th request would hand each rating to the replica that answered.
    order = list(ids)
    random.Random(7).shuffle(order)
    with httpx.Client(timeout=60) as client:
        for rid in order:
            first = client.post(f"{replicated.url}/v1/feedback", json={"id": rid, "rating": True})
            assert first.status_code == 200 and first.json()["status"] == "recorded", first.text
        for rid in order[::-1][:10]:
            again = client.post(f"{replicated.url}/v1/feedback", json={"id": rid, "rating": True})
            assert again.status_code == 200 and again.json()["status"] == "unchanged", again.text
        unknown = client.post(
            f"{replicated.url}/v1/feedback", json={"id": "cmpl-never-issued", "rating": True}
        )
        assert unknown.status_code == 404 and "never issued" in unknown.json()["error"]["message"]


def test_a_loop_or_gate_setting_redeploys_no_replica(replicated: Any) -> None:
    """``serve.run`` again with only ``loop.check_interval_s`` and ``gate.max_ece`` changed:
    the same replica instances answer (Serve tags, evidence ids) and no engine started again."""
    from ray import serve

    from gateway.app import build_app

    def seen() -> tuple[set[str], set[str], set[int]]:
        tags: set[str] = set()
        teachers: set[str] = set()
        starts: set[int] = set()
        with httpx.Client(timeout=30) as client:
            for _ in range(30):
                health = client.get(f"{replicated.url}/healthz").json()
                tags.add(health["replicas"]["ingress"])
                teachers.add(health["replicas"]["teacher"])
                starts.update({health["student_engine_starts"], health["teacher_engine_starts"]})
        return tags, teachers, starts

    before = seen()
    assert len(before[0]) == 2 and before[2] == {1}
    evidence_before = set(replicated.registry.control.scan("evidence"))
    settings = replicated.settings
    changed = settings.model_copy(
        update={
            "loop": settings.loop.model_copy(update={"check_interval_s": settings.loop.check_interval_s + 7}),
            "gate": settings.gate.model_copy(update={"max_ece": settings.gate.max_ece + 0.05}),
        }
    )
    name = replicated.url.rsplit("/", 1)[1]
    serve.run(build_app(changed), name=name, route_prefix=f"/{name}")
    assert seen() == before
    assert set(replicated.registry.control.scan("evidence")) == evidence_before
