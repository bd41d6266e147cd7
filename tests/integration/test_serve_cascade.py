"""The real Serve app on the real demo models: routing, the OpenAI SDK, errors, metrics."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
from openai import OpenAI

from demo import STUDENT_SKILLS, format_prompt, sample_examples, solve

pytestmark = pytest.mark.integration

TEACHER_ONLY = ("shift", "double")


def _complete(url: str, prompt: str, model: str = "distillery") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 16}, timeout=60
    )


@pytest.mark.parametrize(("skill", "word"), [("reverse", "hello"), ("upper", "world"), ("reverse", "cab")])
def test_student_skill_is_answered_by_the_student(serve_url, skill, word):
    resp = _complete(serve_url, format_prompt(skill, word))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-distillery-tier"] == "student"
    assert resp.json()["choices"][0]["text"] == solve(skill, word)
    info = resp.json()["distillery"][0]
    assert info["confidence"] >= info["threshold"]
    assert info["model_version"].startswith("student-")


@pytest.mark.parametrize(("skill", "word"), [("shift", "abc"), ("double", "xyz"), ("shift", "xyz")])
def test_other_skill_is_escalated_and_the_teacher_answers_correctly(serve_url, skill, word):
    resp = _complete(serve_url, format_prompt(skill, word))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-distillery-tier"] == "teacher"
    assert resp.json()["choices"][0]["text"] == solve(skill, word)
    info = resp.json()["distillery"][0]
    assert info["escalated"] and info["confidence"] < info["threshold"]
    assert info["model_version"].startswith("teacher-")


def test_mixed_sample_routes_by_skill(serve_url):
    """At the calibrated threshold, unknown skills escalate and known ones stay."""
    examples = sample_examples([*STUDENT_SKILLS, *TEACHER_ONLY], 60, random.Random(99))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{serve_url}/v1/completions",
                        json={"model": "distillery", "prompt": e.prompt, "max_tokens": 16},
                    )
                    for e in examples
                )
            )

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    known = [
        r.headers["x-distillery-tier"]
        for e, r in zip(examples, responses, strict=True)
        if e.skill in STUDENT_SKILLS
    ]
    unknown = [
        r.headers["x-distillery-tier"]
        for e, r in zip(examples, responses, strict=True)
        if e.skill in TEACHER_ONLY
    ]
    correct = sum(
        r.json()["choices"][0]["text"] == e.answer for e, r in zip(examples, responses, strict=True)
    )
    escalation = (known.count("teacher") + unknown.count("teacher")) / len(examples)
    print(f"\nmixed sample: escalation {escalation:.1%}, exact match {correct / len(examples):.1%}")
    assert unknown.count("teacher") / len(unknown) >= 0.9
    assert known.count("student") / len(known) >= 0.9
    assert correct / len(examples) >= 0.95


def test_openai_sdk_works_unchanged(serve_url):
    client = OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list().data} >= {
        "distillery",
        "distillery-student",
        "distillery-teacher",
    }

    completion = client.completions.create(model="distillery", prompt="reverse: abcd =", max_tokens=8)
    assert completion.choices[0].text == "dcba"

    chat = client.chat.completions.create(
        model="distillery", messages=[{"role": "user", "content": "shift: abc ="}], max_tokens=8
    )
    assert chat.choices[0].message.content == "bcd"
    assert chat.model_extra["distillery"]["tier"] == "teacher"

    stream = client.chat.completions.create(
        model="distillery", messages=[{"role": "user", "content": "upper: abc ="}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == "ABC"

    raw = client.completions.with_raw_response.create(
        model="distillery", prompt="double: abc =", max_tokens=8
    )
    assert raw.headers["x-distillery-tier"] == "teacher"
    assert raw.parse().choices[0].text == "aabbcc"


def test_sdk_sees_openai_style_errors(serve_url):
    import openai

    client = OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="distillery", prompt="reverse: " + "a" * 70 + " =", max_tokens=8)
    assert err.value.body["code"] == "context_length_exceeded"
    assert "Traceback" not in err.value.body["message"] and "ray::" not in err.value.body["message"]


def test_bad_input_on_the_real_stack_never_500s(serve_url):
    cases = [
        {"model": "distillery"},
        {"model": "distillery", "prompt": ""},
        {"model": "distillery", "prompt": "x", "max_tokens": 100000},
        {"model": "distillery", "prompt": {"nested": True}},
        {"model": "nope", "prompt": "x"},
    ]
    for body in cases:
        resp = httpx.post(f"{serve_url}/v1/completions", json=body, timeout=30)
        assert 400 <= resp.status_code < 500, (body, resp.text)
        assert resp.json()["error"]["message"]


def test_health_and_metrics_after_traffic(serve_url):
    _complete(serve_url, "reverse: abc =")
    _complete(serve_url, "shift: abc =")
    health = httpx.get(f"{serve_url}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["student"].startswith("student-")
    text = httpx.get(f"{serve_url}/metrics", timeout=30).text
    for needle in (
        'distillery_requests_total{endpoint="completions",outcome="ok",tier="student"}',
        'distillery_requests_total{endpoint="completions",outcome="ok",tier="teacher"}',
        'distillery_escalations_total{reason="low_confidence"}',
        'distillery_request_latency_seconds_bucket{le="+Inf",tier="teacher"}',
        "distillery_confidence_bucket",
        'distillery_model_version_info{model_id="student"',
        "distillery_confidence_threshold",
    ):
        assert needle in text, needle


@pytest.mark.smoke
def test_escalations_reach_the_feedback_store_redacted(live_stack):
    import time

    url = live_stack.url
    escalated = httpx.post(
        f"{url}/v1/completions",
        timeout=60,
        json={"model": "distillery", "prompt": "double: abc =", "max_tokens": 16},
    ).json()
    pii = httpx.post(
        f"{url}/v1/chat/completions",
        timeout=60,
        json={
            "model": "distillery",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "mail me at jane.doe@example.com"}],
        },
    ).json()
    kept = httpx.post(
        f"{url}/v1/completions",
        timeout=60,
        json={"model": "distillery", "prompt": "reverse: abc =", "max_tokens": 16},
    ).json()
    assert escalated["distillery"][0]["tier"] == "teacher"
    assert pii["distillery"]["tier"] == "teacher"
    assert kept["distillery"][0]["tier"] == "student"

    wanted = {f"{escalated['id']}-0", pii["id"]}
    store = live_stack.store
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not wanted <= set(store.request_ids()):
        time.sleep(0.2)
    by_id = {e.request_id: e for e in store.events()}
    assert wanted <= set(by_id)
    kept_event = by_id.get(f"{kept['id']}-0")  # confident answers are only ever sampled
    assert kept_event is None or (kept_event.kind == "sample" and kept_event.teacher_answer is None)

    event = by_id[f"{escalated['id']}-0"]
    assert event.kind == "escalation" and event.skill == "double" and event.route == "completions"
    assert event.teacher_answer == "aabbcc" and event.student_answer is not None
    assert event.student_confidence is not None and event.student_confidence < event.threshold
    assert event.student_version.startswith("student-") and event.teacher_version.startswith("teacher-")
    assert {"mean_logprob", "min_logprob"} <= set(event.student_scores)

    chat = by_id[pii["id"]]
    assert chat.messages is not None and chat.messages[-1].content == "mail me at [EMAIL]"
    assert chat.redactions == 1 and "jane.doe" not in chat.model_dump_json()

    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert 'distillery_feedback_produced_total{topic="distillery.escalations"}' in metrics


def test_the_session_stack_runs_on_the_fast_path(live_stack):
    """Every test on this stack goes through the default mode: HAProxy owns the gateway's
    port, and the student's engine lives in the ingress replica (no student deployment)."""
    import psutil
    from ray import serve

    port = live_stack.settings.server.port
    owners = {
        psutil.Process(c.pid).name()
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid
    }
    assert owners == {"haproxy"}
    deployments = set(serve.status().applications["distillery"].deployments)
    assert deployments == {"ingress", "teacher"}
    health = httpx.get(f"{live_stack.url}/healthz", timeout=10).json()
    assert health["student_engine_starts"] >= 1
