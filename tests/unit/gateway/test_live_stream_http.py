"""``stream_mode: live`` over HTTP with fake tier streams: the SSE a client reads, its
headers, and what is counted when the stream ends, breaks or fails before any text."""

import json

from fastapi.testclient import TestClient

from gateway._api import build_api
from gateway._serving import OpenAIServing
from gateway.metrics import GatewayMetrics
from gateway.settings import ServerConfig
from router import CascadeConfig, CascadeRouter, GenerationRequest, StreamingCascade, ThresholdPolicy
from tests.fakes.clients import FakeStreamingStudent, FakeStreamingTeacher, FakeTier, make_generation

SURE = [(t, 0.99) for t in ("The", " order", " number", " is", " 4818", ".")]
UNSURE = [("A", 0.3), (" guess", 0.4), (".", 0.9)]
TEACHER = ["The order", " number is", " 4818."]
CHAT = {"model": "distillery", "stream": True, "messages": [{"role": "user", "content": "order number?"}]}


def _client(student, teacher, mode="live", early=True, **cascade):
    whole = FakeTier(lambda r: make_generation("unused"))
    whole_teacher = FakeTier(lambda r: make_generation("".join(TEACHER), 0.99, "t1", model_id="teacher"))
    policy = ThresholdPolicy("mean_logprob", 0.9)
    router = CascadeRouter(whole, whole_teacher, policy, CascadeConfig(**cascade))
    metrics = GatewayMetrics()
    serving = OpenAIServing(
        router,
        metrics,
        ServerConfig(max_tokens_limit=64, stream_mode=mode, decide_whole_early=early),
        lambda: {"student": ("student", "s1"), "teacher": ("teacher", "t1")},
        streaming=StreamingCascade(router, student, teacher),
    )

    async def health():
        return {"student": "s1"}

    return TestClient(build_api(serving, metrics, health), raise_server_exceptions=False), metrics


def _events(resp):
    lines = [line for line in resp.iter_lines() if line]
    return lines[-1], [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_a_committed_student_answer_streams_with_its_routing_in_the_headers_and_first_chunk():
    student = FakeStreamingStudent(SURE, commit_tokens=2, commit_bar=0.9)
    client, metrics = _client(student, FakeStreamingTeacher(TEACHER))
    with client.stream("POST", "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status_code == 200 and resp.headers["x-distillery-tier"] == "student"
        assert resp.headers["x-distillery-model-version"] == "s1"
        done, chunks = _events(resp)
    assert done == "data: [DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["distillery"]["tier"] == "student" and not chunks[0]["distillery"]["escalated"]
    assert chunks[0]["distillery"]["decided_at_tokens"] == 2
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert pieces == ["The order", " number", " is", " 4818", "."]  # the held prefix, then token by token
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = metrics.render().decode()
    assert 'distillery_requests_total{endpoint="chat",outcome="ok",tier="student"} 1.0' in text
    assert 'distillery_stream_time_to_decision_seconds_count{tier="student"} 1.0' in text
    assert 'distillery_stream_time_to_first_token_seconds_count{tier="student"} 1.0' in text
    assert 'distillery_stream_inter_token_latency_seconds_count{tier="student"} 4.0' in text


def test_a_committed_answer_whose_whole_score_falls_is_counted_as_a_late_doubt():
    lost = [("The", 0.99), (" order", 0.99), (" number", 0.3), (" is", 0.2), (" 12", 0.1), (".", 0.2)]
    client, metrics = _client(
        FakeStreamingStudent(lost, commit_tokens=2, commit_bar=0.9), FakeStreamingTeacher(TEACHER)
    )
    with client.stream("POST", "/v1/chat/completions", json=CHAT) as resp:
        assert resp.headers["x-distillery-tier"] == "student"
        _events(resp)
    assert 'distillery_late_doubts_total{model_version="s1"} 1.0' in metrics.render().decode()


def test_an_escalated_stream_carries_only_the_teachers_text():
    student = FakeStreamingStudent(UNSURE, commit_tokens=1, commit_bar=0.9)
    client, metrics = _client(student, FakeStreamingTeacher(TEACHER))
    with client.stream("POST", "/v1/chat/completions", json=CHAT) as resp:
        assert resp.headers["x-distillery-tier"] == "teacher"
        _, chunks = _events(resp)
    assert chunks[0]["distillery"]["escalated"] and chunks[0]["distillery"]["model_version"] == "t1"
    assert chunks[0]["distillery"]["decided_at_tokens"] == 1  # escalated on its first token
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "The order number is 4818."
    )
    assert student.closed and not student.finished
    assert 'distillery_escalations_total{reason="low_confidence"} 1.0' in metrics.render().decode()


def test_a_teacher_failing_mid_answer_ends_the_stream_with_an_error_event_and_done():
    student = FakeStreamingStudent(UNSURE, commit_tokens=1, commit_bar=0.9)
    client, metrics = _client(student, FakeStreamingTeacher(TEACHER, fail_after=1))
    with client.stream("POST", "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status_code == 200
        done, chunks = _events(resp)
    assert done == "data: [DONE]"
    assert chunks[-1]["error"]["code"] == "teacher_failed" and "incomplete" in chunks[-1]["error"]["message"]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["The order"]
    assert 'outcome="teacher_error",tier="none"} 1.0' in metrics.render().decode()


def test_a_teacher_failing_before_any_text_is_an_http_error_not_a_broken_stream():
    student = FakeStreamingStudent(UNSURE, commit_tokens=1, commit_bar=0.9)
    client, _ = _client(student, FakeStreamingTeacher(TEACHER, fail_first=99))
    resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "teacher_unavailable"
    assert "Traceback" not in resp.text


def test_a_completion_streams_live_and_asks_for_usage():
    student = FakeStreamingStudent(SURE, commit_tokens=2, commit_bar=0.9)
    client, _ = _client(student, FakeStreamingTeacher(TEACHER))
    body = {
        "model": "distillery",
        "stream": True,
        "prompt": "order number?",
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/completions", json=body) as resp:
        done, chunks = _events(resp)
    assert done == "data: [DONE]"
    assert chunks[0]["distillery"]["tier"] == "student" and chunks[0]["choices"][0]["text"] == "The order"
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "The order number is 4818."
    assert chunks[-1]["usage"]["completion_tokens"] == len(SURE)


def test_replay_mode_keeps_the_whole_answer_path():
    student = FakeStreamingStudent(SURE, commit_tokens=2, commit_bar=0.9)
    client, _ = _client(student, FakeStreamingTeacher(TEACHER), mode="replay")
    with client.stream("POST", "/v1/chat/completions", json=CHAT) as resp:
        assert resp.headers["x-distillery-tier"] == "student"  # the whole-answer fake tier answered
        _, chunks = _events(resp)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "unused"
    assert student.produced == 0


async def _live_stream(student, teacher):
    from gateway._live import LiveStream

    whole = FakeTier(lambda r: make_generation("unused"))
    router = CascadeRouter(whole, whole, ThresholdPolicy("mean_logprob", 0.9), CascadeConfig())
    events = StreamingCascade(router, student, teacher).stream(GenerationRequest(prompt="order number?"))
    decided = await anext(events)
    ends, breaks = [], []
    return LiveStream(decided, events, ends.append, breaks.append), ends, breaks


async def test_a_client_gone_mid_stream_is_counted_once_as_cancelled_and_a_finished_one_never():
    from gateway._live import chat_sse, routing_of

    student = FakeStreamingStudent(SURE, commit_tokens=2, commit_bar=0.9)
    live, ends, breaks = await _live_stream(student, FakeStreamingTeacher(TEACHER))
    lines = chat_sse(live, "id", "distillery", routing_of(live.decided, "mean_logprob"), lambda end: [], None)
    await anext(lines)  # the role chunk
    await anext(lines)  # the held prefix
    await lines.aclose()  # the client went away
    assert breaks == ["cancelled"] and ends == [] and student.closed and not student.finished

    student = FakeStreamingStudent(SURE, commit_tokens=2, commit_bar=0.9)
    live, ends, breaks = await _live_stream(student, FakeStreamingTeacher(TEACHER))
    lines = chat_sse(live, "id", "distillery", routing_of(live.decided, "mean_logprob"), lambda end: [], None)
    sent = [line async for line in lines]
    assert sent[-1] == "data: [DONE]\n\n" and len(ends) == 1 and breaks == []


# ---- whole (non-streamed) answers decided on the student's prefix -------------------------
WHOLE = {**CHAT, "stream": False}


def test_a_whole_answer_that_escalates_on_its_prefix_stops_the_student_there():
    student = FakeStreamingStudent(UNSURE, commit_tokens=1, commit_bar=0.9)
    client, metrics = _client(student, FakeStreamingTeacher(TEACHER))
    resp = client.post("/v1/chat/completions", json=WHOLE)
    assert resp.status_code == 200 and resp.headers["x-distillery-tier"] == "teacher"
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == "The order number is 4818."
    assert body["distillery"]["escalated"] and body["distillery"]["decided_at_tokens"] == 1
    # The student's generation was cancelled at its commit point, not run to the end.
    assert student.closed and not student.finished and student.produced == 1
    assert 'distillery_escalations_total{reason="low_confidence"} 1.0' in metrics.render().decode()


def test_a_whole_answer_committed_on_its_prefix_is_the_students_whole_answer():
    student = FakeStreamingStudent(SURE, commit_tokens=2, commit_bar=0.9)
    teacher = FakeStreamingTeacher(TEACHER)
    client, _ = _client(student, teacher)
    resp = client.post("/v1/completions", json={"model": "distillery", "prompt": "order number?"})
    assert resp.status_code == 200 and resp.headers["x-distillery-tier"] == "student"
    assert resp.json()["choices"][0]["text"] == "The order number is 4818."
    assert student.finished and teacher.calls == 0


def test_a_whole_escalation_asks_the_teacher_for_its_whole_answer_not_its_stream():
    student = FakeStreamingStudent(UNSURE, commit_tokens=1, commit_bar=0.9)
    teacher = FakeStreamingTeacher(TEACHER)
    client, _ = _client(student, teacher)
    resp = client.post("/v1/chat/completions", json=WHOLE)
    assert resp.json()["choices"][0]["message"]["content"] == "The order number is 4818."
    assert teacher.calls == 0  # the whole answer, one call: no per-piece relay


def test_a_student_breaking_after_its_commit_point_on_a_whole_request_is_answered_by_the_whole_cascade():
    student = FakeStreamingStudent(SURE, commit_tokens=2, commit_bar=0.9, fail_at=4)
    client, metrics = _client(student, FakeStreamingTeacher(TEACHER))
    resp = client.post("/v1/chat/completions", json=WHOLE)
    # Nothing had reached this client: no broken answer, the whole-answer path answered.
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "unused"
    assert student.produced == 4 and not student.finished and student.whole_calls == 0
    assert 'outcome="ok",tier="student"} 1.0' in metrics.render().decode()


def test_a_whole_request_asking_for_logprobs_takes_the_whole_answer_path():
    student = FakeStreamingStudent(SURE, commit_tokens=2, commit_bar=0.9)
    client, _ = _client(student, FakeStreamingTeacher(TEACHER))
    resp = client.post("/v1/chat/completions", json={**WHOLE, "logprobs": True})
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "unused"
    assert student.produced == 0


def test_whole_requests_are_decided_on_the_whole_answer_unless_asked_to_decide_early():
    student = FakeStreamingStudent(UNSURE, commit_tokens=1, commit_bar=0.9)
    client, _ = _client(student, FakeStreamingTeacher(TEACHER), early=False)
    resp = client.post("/v1/chat/completions", json=WHOLE)
    assert resp.status_code == 200 and resp.json()["distillery"]["decided_at_tokens"] is None
    assert student.produced == 0  # the whole-answer cascade's tiers answered
