"""Structured outputs and tool calls over fake tiers: every field is honoured or refused.

What must not happen: a field that changes the answer silently ignored; an answer that
breaks its schema served from the student; a client's bad request counted against a tier.
"""

import json

import pytest
from fastapi.testclient import TestClient

from gateway._api import build_api
from gateway._serving import OpenAIServing
from gateway.metrics import GatewayMetrics
from gateway.settings import ServerConfig
from router import CascadeConfig, CascadeRouter, ThresholdPolicy
from tests.fakes.clients import FakeTier, make_generation

SCHEMA = {
    "type": "object",
    "properties": {"order_number": {"type": "string"}, "urgency": {"enum": ["low", "high"]}},
    "required": ["order_number", "urgency"],
    "additionalProperties": False,
}
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {
            "type": "object",
            "properties": {"order_number": {"type": "string"}},
            "required": ["order_number"],
        },
    },
}


def _client(student_text, teacher_text='{"order_number": "1234", "urgency": "high"}', prob=0.999):
    student = FakeTier(
        lambda r: make_generation(student_text(r) if callable(student_text) else student_text, prob)
    )
    teacher = FakeTier(lambda r: make_generation(teacher_text, 0.99, "teacher-v1", "teacher"))
    router = CascadeRouter(student, teacher, ThresholdPolicy("mean_logprob", 0.9), CascadeConfig())
    metrics = GatewayMetrics()
    serving = OpenAIServing(
        router,
        metrics,
        ServerConfig(max_tokens_limit=64, max_n=4),
        lambda: {"student": ("student", "v-test"), "teacher": ("teacher", "teacher-v1")},
    )

    async def health():
        return {}

    client = TestClient(build_api(serving, metrics, health), raise_server_exceptions=False)
    return client, student, teacher, metrics


def _chat(client, **body):
    payload = {
        "model": "distillery",
        "messages": [{"role": "user", "content": "ticket 1234, urgent"}],
        **body,
    }
    return client.post("/v1/chat/completions", json=payload)


def _json_format(schema=SCHEMA):
    return {"type": "json_schema", "json_schema": {"name": "ticket", "schema": schema, "strict": True}}


def test_a_valid_confident_json_answer_is_served_by_the_student_and_the_schema_reaches_it():
    client, student, teacher, _ = _client('{"order_number": "1234", "urgency": "low"}')
    resp = _chat(client, response_format=_json_format())
    assert resp.status_code == 200, resp.text
    assert resp.json()["distillery"]["tier"] == "student"
    assert json.loads(resp.json()["choices"][0]["message"]["content"]) == {
        "order_number": "1234",
        "urgency": "low",
    }
    sent = student.calls[0]
    assert sent.response_format is not None and json.loads(sent.response_format.schema_text) == SCHEMA
    assert sent.output_kind == "json"
    assert not teacher.calls


@pytest.mark.parametrize(
    "answer",
    [
        '{"order_number": "1234", "urgency": "someday"}',  # enum broken
        '{"order_number": "1234"',  # not JSON
        "Sure! Here is the JSON",  # prose
    ],
)
def test_a_confident_student_answer_that_breaks_the_schema_escalates_and_never_reaches_the_client(answer):
    client, _, teacher, metrics = _client(answer, prob=0.9999)
    resp = _chat(client, response_format=_json_format())
    assert resp.status_code == 200
    assert resp.json()["distillery"]["tier"] == "teacher"
    assert json.loads(resp.json()["choices"][0]["message"]["content"])["urgency"] == "high"
    assert teacher.calls[0].response_format is not None
    text = metrics.render().decode()
    assert 'distillery_escalations_total{reason="invalid_answer"} 1.0' in text
    assert 'distillery_structured_requests_total{kind="json",tier="teacher"} 1.0' in text


def test_an_invalid_student_answer_is_not_served_when_the_teacher_fails_under_serve_student():
    from router.errors import TeacherConnectionError

    student = FakeTier(lambda r: make_generation('{"order_number": 12}', 0.9999))
    teacher = FakeTier(lambda r: make_generation("unused"), fail=TeacherConnectionError("down"))
    router = CascadeRouter(
        student,
        teacher,
        ThresholdPolicy("mean_logprob", 0.9),
        CascadeConfig(teacher_failure_policy="serve_student", teacher_retries=0),
    )
    metrics = GatewayMetrics()
    serving = OpenAIServing(router, metrics, ServerConfig(), lambda: {})

    async def health():
        return {}

    client = TestClient(build_api(serving, metrics, health), raise_server_exceptions=False)
    resp = _chat(client, response_format=_json_format())
    assert resp.status_code == 503, resp.text
    assert "order_number" not in resp.text
    # A free-text request under the same policy still gets the student's answer.
    plain = _chat(client)
    assert (
        plain.status_code == 200
        and plain.json()["choices"][0]["message"]["content"] == '{"order_number": 12}'
    )


def test_json_object_mode_refuses_a_non_object_answer_from_the_student():
    client, _, teacher, _ = _client('["a list"]')
    resp = _chat(client, response_format={"type": "json_object"})
    assert resp.json()["distillery"]["tier"] == "teacher"
    assert len(teacher.calls) == 1


def test_a_forced_tool_call_comes_back_as_openai_tool_calls():
    client, student, _, _ = _client('[{"name": "lookup_order", "arguments": {"order_number": "1234"}}]')
    resp = _chat(client, tools=[LOOKUP], tool_choice="required")
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "lookup_order"
    assert json.loads(call["function"]["arguments"]) == {"order_number": "1234"}
    assert choice["message"]["content"] is None
    assert student.calls[0].tool_choice == "required" and student.calls[0].tools[0].name == "lookup_order"


def test_a_tool_call_with_arguments_that_break_the_parameters_escalates():
    teacher_call = '[{"name": "lookup_order", "arguments": {"order_number": "1234"}}]'
    client, _, teacher, _ = _client('[{"name": "lookup_order", "arguments": {}}]', teacher_call)
    resp = _chat(
        client, tools=[LOOKUP], tool_choice={"type": "function", "function": {"name": "lookup_order"}}
    )
    assert resp.json()["distillery"]["tier"] == "teacher"
    assert teacher.calls[0].tool_choice == "lookup_order"
    assert resp.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup_order"


def test_auto_tools_serve_text_or_parsed_calls():
    client, _, _, _ = _client(
        lambda r: (
            '<tool_call>[{"name": "lookup_order", "arguments": {"order_number": "9"}}]</tool_call>'
            if "order" in r.messages[-1].content
            else "Hello there"
        )
    )
    called = client.post(
        "/v1/chat/completions",
        json={
            "model": "distillery",
            "messages": [{"role": "user", "content": "order 9?"}],
            "tools": [LOOKUP],
        },
    ).json()
    assert called["choices"][0]["finish_reason"] == "tool_calls"
    plain = client.post(
        "/v1/chat/completions",
        json={"model": "distillery", "messages": [{"role": "user", "content": "hi"}], "tools": [LOOKUP]},
    ).json()
    assert plain["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there",
        "tool_calls": None,
    }
    assert plain["choices"][0]["finish_reason"] == "stop"


def test_the_tool_loop_second_turn_is_accepted_and_reaches_the_tier_whole():
    client, student, _, _ = _client("Order 1234 has shipped.")
    messages = [
        {"role": "developer", "content": "You are a support agent."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Where is"}, {"type": "text", "text": "order 1234?"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order_number": "1234"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
    ]
    resp = client.post(
        "/v1/chat/completions", json={"model": "distillery", "messages": messages, "tools": [LOOKUP]}
    )
    assert resp.status_code == 200, resp.text
    turns = student.calls[0].messages
    assert turns[1].content == "Where is\norder 1234?"
    assert turns[2].tool_calls[0].name == "lookup_order" and turns[2].content == ""
    assert turns[3].role == "tool" and turns[3].tool_call_id == "call_1"


def test_n_seed_penalties_logit_bias_and_top_logprobs_reach_the_tier():
    client, student, _, _ = _client("olleh")
    resp = _chat(
        client,
        n=3,
        seed=7,
        temperature=0.8,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        logit_bias={"42": -100, "7": 5},
        logprobs=True,
        top_logprobs=2,
    )
    assert resp.status_code == 200, resp.text
    assert [c["index"] for c in resp.json()["choices"]] == [0, 1, 2]
    assert sorted(c.seed for c in student.calls) == [7, 8, 9]
    first = student.calls[0]
    assert first.presence_penalty == 0.5 and first.frequency_penalty == -0.25
    assert dict(first.logit_bias) == {42: -100.0, 7: 5.0}
    assert first.top_logprobs == 2
    assert resp.json()["usage"]["completion_tokens"] == 15


def test_stream_sends_tool_call_deltas_and_the_usage_chunk():
    client, _, _, _ = _client('[{"name": "lookup_order", "arguments": {"order_number": "1234"}}]')
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "distillery",
            "messages": [{"role": "user", "content": "order 1234"}],
            "tools": [LOOKUP],
            "tool_choice": "required",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as resp:
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls and calls[0]["function"]["name"] == "lookup_order"
    finishes = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("body", "param_word"),
    [
        ({"response_format": _json_format({"type": "objekt"})}, "JSON Schema"),
        ({"response_format": {"type": "json_schema"}}, "json_schema"),
        ({"tools": [LOOKUP], "tool_choice": {"type": "function", "function": {"name": "cancel"}}}, "cancel"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [LOOKUP, LOOKUP]}, "twice"),
        ({"n": 5}, "n=5"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"logit_bias": {"token": 3}}, "token ids"),
        ({"logit_bias": {"3": 500}}, "logit_bias"),
        ({"top_logprobs": 2}, "logprobs"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "image_url",
        ),
        ({"messages": [{"role": "user", "content": None}]}, "null"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]}, "tool_call_id"),
        ({"tools": [LOOKUP], "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_bad_structured_input_is_a_400_naming_the_problem_and_no_tier_is_called(body, param_word):
    client, student, teacher, metrics = _client("x")
    resp = _chat(client, **body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert param_word in error["message"] + (error.get("param") or "")
    assert "Traceback" not in resp.text and "/work" not in resp.text
    assert not student.calls and not teacher.calls
    text = metrics.render().decode()
    assert 'outcome="teacher_error"' not in text and 'outcome="error"' not in text
    assert not [
        line
        for line in text.splitlines()
        if line.startswith("distillery_teacher_errors_total{") and not line.endswith(" 0.0")
    ]


def test_unsupported_completion_fields_are_refused_and_defaults_pass():
    client, _, _, _ = _client("x")
    ok = client.post(
        "/v1/completions", json={"model": "distillery", "prompt": "p", "echo": False, "best_of": 1}
    )
    assert ok.status_code == 200, ok.text
    for field, value in (("echo", True), ("suffix", "end"), ("best_of", 3)):
        resp = client.post("/v1/completions", json={"model": "distillery", "prompt": "p", field: value})
        assert resp.status_code == 400 and field in resp.json()["error"]["message"]


def test_completions_honour_n_seed_and_response_format():
    client, student, _, _ = _client('{"a": 1}')
    resp = client.post(
        "/v1/completions",
        json={
            "model": "distillery",
            "prompt": ["p", "q"],
            "n": 2,
            "seed": 1,
            "response_format": {"type": "json_object"},
        },
    )
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["choices"]) == 4
    assert all(c.response_format is not None for c in student.calls)
    assert sorted(c.seed for c in student.calls) == [1, 1, 2, 2]
