"""The HTTP contract over fake tiers: every bad input is a 4xx with an OpenAI error body."""

import json

import pytest
from fastapi.testclient import TestClient

from gateway._api import build_api
from gateway._serving import OpenAIServing
from gateway.metrics import GatewayMetrics
from gateway.settings import ServerConfig
from router import CascadeConfig, CascadeRouter, ThresholdPolicy
from tests.fakes.clients import FakeTier, make_generation


def _student_answer(req):
    prompt = req.prompt or req.messages[-1].content
    # The fake student is sure of "reverse" and unsure of anything else.
    prob = 0.999 if prompt.startswith("reverse") else 0.5
    return make_generation("olleh", prob, "student-v1", "student")


def _client(teacher=None, student=None, **cascade):
    student = student or FakeTier(_student_answer, max_prompt_chars=40)
    teacher = teacher or FakeTier(lambda r: make_generation("IFMMP", 0.99, "teacher-v1", "teacher"))
    router = CascadeRouter(student, teacher, ThresholdPolicy("mean_logprob", 0.9), CascadeConfig(**cascade))
    metrics = GatewayMetrics()
    serving = OpenAIServing(
        router,
        metrics,
        ServerConfig(max_tokens_limit=64),
        lambda: {"student": ("student", "student-v1"), "teacher": ("teacher", "teacher-v1")},
    )

    async def health():
        return {"student": "student-v1"}

    return TestClient(build_api(serving, metrics, health), raise_server_exceptions=False), metrics


def _assert_error(resp, status, code=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert {"message", "type", "code"} <= set(body["error"])
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


def test_student_answer_carries_tier_confidence_and_version():
    client, _ = _client()
    resp = client.post("/v1/completions", json={"model": "distillery", "prompt": "reverse: hello ="})
    assert resp.status_code == 200
    assert resp.headers["x-distillery-tier"] == "student"
    assert resp.headers["x-distillery-model-version"] == "student-v1"
    info = resp.json()["distillery"][0]
    assert info["tier"] == "student" and info["confidence"] == pytest.approx(0.999)
    assert resp.json()["choices"][0]["text"] == "olleh"


def test_low_confidence_escalates_to_teacher():
    client, metrics = _client()
    resp = client.post("/v1/completions", json={"model": "distillery", "prompt": "shift: hello ="})
    assert resp.status_code == 200
    assert resp.headers["x-distillery-tier"] == "teacher"
    assert resp.json()["choices"][0]["text"] == "IFMMP"
    text = metrics.render().decode()
    assert 'distillery_escalations_total{reason="low_confidence"} 1.0' in text


def test_chat_completion_and_logprobs():
    client, _ = _client()
    resp = client.post(
        "/v1/chat/completions",
        json={
            "model": "distillery",
            "logprobs": True,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "reverse: hello ="},
            ],
        },
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "olleh", "tool_calls": None}
    assert len(body["choices"][0]["logprobs"]["content"]) == 5
    assert body["distillery"]["tier"] == "student"


def test_a_chat_request_without_max_tokens_is_not_cut_at_a_small_default():
    """The SDKs and frameworks leave ``max_tokens`` out: a tool call or a JSON answer cut at
    16 tokens would fail its contract on both tiers. Left out, the budget is the server's
    limit, marked as not given so each tier fits it to its own context; completions keep
    OpenAI's documented 16."""
    student = FakeTier(_student_answer)
    client, _ = _client(student=student)
    chat = {"model": "distillery", "messages": [{"role": "user", "content": "reverse: hello ="}]}

    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    assert client.post("/v1/chat/completions", json={**chat, "max_tokens": 12}).status_code == 200
    assert client.post("/v1/chat/completions", json={**chat, "max_completion_tokens": 9}).status_code == 200
    completion = {"model": "distillery", "prompt": "reverse: hello ="}
    assert client.post("/v1/completions", json=completion).status_code == 200

    budgets = [(call.max_tokens, call.max_tokens_given) for call in student.calls]
    assert budgets == [(64, False), (12, True), (9, True), (16, True)]


def test_chat_stream_is_server_sent_events_ending_with_done():
    client, _ = _client()
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "distillery",
            "stream": True,
            "messages": [{"role": "user", "content": "reverse: hello ="}],
        },
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-distillery-tier"] == "student"
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "olleh"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_completion_stream():
    client, _ = _client()
    with client.stream(
        "POST", "/v1/completions", json={"model": "distillery", "stream": True, "prompt": "reverse: hello ="}
    ) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
    assert text == "olleh"


def test_models_health_metrics():
    client, _ = _client()
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["distillery", "distillery-student", "distillery-teacher"]
    assert client.get("/healthz").json()["status"] == "ok"
    assert "distillery_requests_total" in client.get("/metrics").text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"prompt": "reverse: a ="}, "invalid_request"),  # missing model
        ({"model": "distillery"}, "invalid_request"),  # missing prompt
        ({"model": "distillery", "prompt": 42}, "invalid_request"),  # wrong type
        ({"model": "distillery", "prompt": "x", "max_tokens": "lots"}, "invalid_request"),
        ({"model": "distillery", "prompt": "x", "temperature": "hot"}, "invalid_request"),
        ({"model": "distillery", "prompt": ""}, "empty_prompt"),
        ({"model": "distillery", "prompt": "   "}, "empty_prompt"),
        ({"model": "distillery", "prompt": []}, "empty_prompt"),
        ({"model": "distillery", "prompt": "x", "max_tokens": 65}, "invalid_value"),
        ({"model": "distillery", "prompt": "x", "max_tokens": 0}, "invalid_value"),
        ({"model": "distillery", "prompt": "x", "n": 9}, "invalid_value"),
        ({"model": "distillery", "prompt": "reverse: " + "a" * 60 + " ="}, "context_length_exceeded"),
        ({"model": "distillery", "prompt": ["a", "b"], "stream": True}, "invalid_value"),
    ],
)
def test_bad_completion_requests_are_400(body, code):
    client, _ = _client()
    _assert_error(client.post("/v1/completions", json=body), 400, code)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "distillery", "messages": []},
        {"model": "distillery", "messages": [{"role": "user"}]},
        {"model": "distillery", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "distillery", "messages": [{"role": "user", "content": ""}]},
        {"model": "distillery", "messages": "hello"},
        {"model": "distillery", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 500},
    ],
)
def test_bad_chat_requests_are_400(body):
    client, _ = _client()
    _assert_error(client.post("/v1/chat/completions", json=body), 400)


def test_malformed_json_and_non_object_bodies_are_400():
    client, _ = _client()
    _assert_error(
        client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
        400,
    )
    _assert_error(client.post("/v1/completions", json=[1, 2]), 400)


def test_unknown_model_is_404_model_not_found():
    client, _ = _client()
    _assert_error(
        client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 404, "model_not_found"
    )


def test_unknown_route_and_wrong_method_are_json_errors():
    client, _ = _client()
    _assert_error(client.get("/v1/nothing"), 404)
    _assert_error(client.get("/v1/completions"), 405)


def test_teacher_unreachable_is_503_within_the_timeout():
    down = FakeTier(lambda r: make_generation("x"), delay_s=30.0)
    client, metrics = _client(teacher=down, teacher_timeout_s=0.1)
    resp = client.post("/v1/completions", json={"model": "distillery", "prompt": "shift: abc ="})
    _assert_error(resp, 503, "teacher_timeout")
    assert 'outcome="teacher_error"' in metrics.render().decode()


def test_teacher_down_with_serve_student_policy_marks_low_confidence():
    down = FakeTier(lambda r: make_generation("x"), fail=ConnectionError("refused"))
    client, _ = _client(teacher=down, teacher_failure_policy="serve_student")
    resp = client.post("/v1/completions", json={"model": "distillery", "prompt": "shift: abc ="})
    assert resp.status_code == 200
    info = resp.json()["distillery"][0]
    assert info["tier"] == "student" and info["low_confidence"] is True


def test_forced_tier_model_names():
    client, _ = _client()
    resp = client.post("/v1/completions", json={"model": "distillery-teacher", "prompt": "reverse: abc ="})
    assert resp.headers["x-distillery-tier"] == "teacher"
    resp = client.post("/v1/completions", json={"model": "distillery-student", "prompt": "shift: abc ="})
    assert resp.headers["x-distillery-tier"] == "student"


def test_model_version_info_follows_the_versions_answering():
    from router import CascadeResult, Decision

    metrics = GatewayMetrics()
    metrics.set_model("student", "student", "v1")

    def result(version):
        gen = make_generation("x", 0.99, version, "student")
        return CascadeResult(gen, "student", Decision(0.99, False), False, False, None, 0.01, 0.0, "ok", 0.9)

    def labelled():
        return {
            s.labels["model_version"]
            for s in metrics.model_info.collect()[0].samples
            if s.labels["tier"] == "student"
        }

    metrics.observe("completions", result("v1"), 0.01)
    metrics.observe("completions", result("v2"), 0.01)  # a canary beside v1
    assert labelled() == {"v1", "v2"}
    metrics.observe("completions", result("v3"), 0.01)  # bounded: the oldest drops
    assert labelled() == {"v2", "v3"}
    assert metrics.registry.get_sample_value("distillery_confidence_threshold") == 0.9


def test_student_answers_are_counted_per_route_with_a_bounded_label_set():
    from gateway.metrics import MAX_ROUTE_LABELS
    from router import CascadeResult, Decision

    metrics = GatewayMetrics()
    gen = make_generation("x", 0.99, "v1", "student")
    result = CascadeResult(gen, "student", Decision(0.99, False), False, False, None, 0.01, 0.0, "ok", 0.9)
    metrics.observe("chat", result, 0.01, "plural")
    metrics.observe("chat", result, 0.01, None)
    for i in range(MAX_ROUTE_LABELS + 5):  # a client's free-text metadata.route
        metrics.observe("chat", result, 0.01, f"r{i}")

    def count(route: str) -> float | None:
        labels = {"model_version": "v1", "escalated": "false", "route": route}
        return metrics.registry.get_sample_value("distillery_student_answers_total", labels)

    assert count("plural") == 1 and count("") == 1
    routes = {s.labels["route"] for s in metrics.student_answers.collect()[0].samples}
    assert len(routes) == MAX_ROUTE_LABELS + 2  # the bounded set, '' and 'other'
    assert count("other") == 6


def test_the_request_reaches_the_cascade_with_its_route_so_its_routes_threshold_can_judge_it():
    seen: list[str | None] = []

    def student(req):
        seen.append(req.route)
        return _student_answer(req)

    router = CascadeRouter(
        FakeTier(student),
        FakeTier(lambda r: make_generation("IFMMP", 0.99, "teacher-v1", "teacher")),
        ThresholdPolicy("mean_logprob", 0.9),
        CascadeConfig(),
    )
    metrics = GatewayMetrics()
    serving = OpenAIServing(router, metrics, ServerConfig(max_tokens_limit=64), lambda: {})

    async def health():
        return {}

    client = TestClient(build_api(serving, metrics, health), raise_server_exceptions=False)
    body = {"model": "distillery", "prompt": "reverse: hello =", "metadata": {"route": "billing"}}
    assert client.post("/v1/completions", json=body).status_code == 200
    del body["metadata"]
    assert client.post("/v1/completions", json=body).status_code == 200
    assert seen == ["billing", None]
