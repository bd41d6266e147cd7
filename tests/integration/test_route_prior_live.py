"""The route prior on the live stack: learned from the feedback store through the real
broker and consumer, it sends a route the student always escalates to the teacher without
asking the student, and never touches a tier asked for by name."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from demo import format_prompt, sample_examples, solve
from tests.conftest import side_app, wait_until

pytestmark = pytest.mark.integration

ROUTE = "prior-test"


@pytest.fixture(scope="module")
def prior_stack(live_stack, demo_models, tmp_path_factory):
    """The demo pair as its own Serve app (route ``/prior``) with its own broker, consumer
    and store, the prior on with the shipped thresholds (re-read every 2 s). The session's
    ``live_stack`` runs with the prior off: its tests count on the student being asked on
    every route, and their traffic (canary tests send a third ``shift`` for minutes)
    would otherwise teach it to skip the student there."""
    from distillery.settings import load_settings

    var = tmp_path_factory.mktemp("priorvar")

    def settings_for(bootstrap: str):
        return load_settings(
            models_dir=str(demo_models),
            var_dir=str(var),
            server={"port": live_stack.settings.server.port},
            cascade={"teacher_timeout_s": 30, "prior": {"enabled": True, "refresh_s": 2}},
            feedback={"kafka": {"bootstrap": bootstrap}, "sample_rate": 0.2},
        )

    with side_app(live_stack, "prior", var, settings_for) as stack:
        yield stack.url


def _body(prompt: str, model: str = "distillery") -> dict[str, object]:
    return {"model": model, "prompt": prompt, "max_tokens": 16, "metadata": {"route": ROUTE}}


async def _send(url: str, prompts: list[str], model: str = "distillery") -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        gate = asyncio.Semaphore(8)

        async def one(p: str) -> httpx.Response:
            async with gate:
                return await client.post(f"{url}/v1/completions", json=_body(p, model))

        return await asyncio.gather(*(one(p) for p in prompts))


def _prior_rows(url: str) -> list[dict[str, object]]:
    rows = httpx.get(f"{url}/healthz", timeout=10).json().get("route_prior") or []
    return [r for r in rows if r["route"] == ROUTE]


def test_a_route_the_student_always_escalates_is_sent_past_it_once_the_store_says_so(prior_stack):
    url = prior_stack
    examples = sample_examples(("shift",), 250, random.Random(5))
    first = asyncio.run(_send(url, [e.prompt for e in examples]))
    assert all(r.status_code == 200 for r in first)
    infos = [r.json()["distillery"][0] for r in first]
    asked = [i for i in infos if i["decided_at_tokens"] != 0]
    assert sum(i["escalated"] for i in asked) >= 0.95 * len(asked)  # the student's own verdicts
    # At the stack's 0.2 sample rate the store's escalations count a fifth each: ~50 of
    # the sampled population, all escalated, is surely above 0.9.
    assert wait_until(lambda: any(r["verdict"] == "teacher" for r in _prior_rows(url)), 90, 1), _prior_rows(
        url
    )
    row = _prior_rows(url)[0]
    assert row["version"].startswith("student-") and row["rate"] >= 0.95

    later = sample_examples(("shift",), 40, random.Random(6))
    answers = asyncio.run(_send(url, [e.prompt for e in later]))
    skipped = [r for r in answers if r.json()["distillery"][0]["decided_at_tokens"] == 0]
    assert len(skipped) >= 30  # all but the explored share (5%)
    for resp, ex in zip(answers, later, strict=True):
        info = resp.json()["distillery"][0]
        if info["decided_at_tokens"] == 0:
            assert resp.headers["x-distillery-tier"] == "teacher" and info["escalated"]
            assert info["confidence"] is None  # the student was not asked
            assert resp.json()["choices"][0]["text"] == solve("shift", ex.word)
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    line = next(
        m for m in metrics.splitlines() if m.startswith('distillery_escalations_total{reason="route_prior"}')
    )
    assert float(line.split()[-1]) >= len(skipped)
    assert f'route="{ROUTE}",verdict="teacher"' in metrics

    by_name = asyncio.run(_send(url, [format_prompt("shift", "abc")], model="distillery-student"))[0]
    assert by_name.status_code == 200 and by_name.headers["x-distillery-tier"] == "student"
