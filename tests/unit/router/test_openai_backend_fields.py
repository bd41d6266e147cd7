"""The OpenAI-compatible teacher forwards answer-shaping fields as the client sent them and
turns tool calls into the canonical tool-call text (no network: ``httpx.MockTransport``)."""

import json

import httpx
import pytest

from router import ChatTurn, GenerationRequest, OpenAIHTTPBackend
from router._contract import check_answer
from router._types import ResponseFormat, ToolCall, ToolSpec

WEATHER = ToolSpec(
    name="get_weather",
    description="Weather in a city",
    parameters=json.dumps(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ),
)
CLOCK = ToolSpec(name="get_time")
USER = ChatTurn(role="user", content="weather in Paris?")


class Recorder:
    """Answers with ``message`` (and ``logprobs``), keeping every body it was sent."""

    def __init__(self, message=None, logprobs=None, text=None) -> None:
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.message = message if message is not None else {"role": "assistant", "content": "ok"}
        self.logprobs = logprobs
        self.text = text

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        self.bodies.append(json.loads(request.content))
        choice: dict = {"finish_reason": "stop", "logprobs": self.logprobs}
        if request.url.path.endswith("/chat/completions"):
            choice["message"] = self.message
        else:
            choice["text"] = self.text or "ok"
        return httpx.Response(200, json={"model": "big", "choices": [choice]})

    def backend(self) -> OpenAIHTTPBackend:
        return OpenAIHTTPBackend("http://teacher.test", "big", transport=httpx.MockTransport(self))


async def test_a_plain_chat_request_sends_no_new_fields():
    rec = Recorder()
    await rec.backend().generate([GenerationRequest(messages=(USER,))])
    body = rec.bodies[0]
    assert body["messages"] == [{"role": "user", "content": "weather in Paris?"}]
    assert body["top_logprobs"] == 1 and body["logprobs"] is True
    absent = {"response_format", "tools", "tool_choice", "parallel_tool_calls", "seed", "logit_bias"}
    assert absent.isdisjoint(body) and "presence_penalty" not in body and "frequency_penalty" not in body


async def test_sampling_fields_are_forwarded_when_set():
    rec = Recorder()
    req = GenerationRequest(
        messages=(USER,),
        temperature=0.7,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        logit_bias=((13, -100.0), (7, 2.5)),
        top_logprobs=4,
    )
    await rec.backend().generate([req])
    body = rec.bodies[0]
    assert body["seed"] == 7 and body["presence_penalty"] == 0.5 and body["frequency_penalty"] == -0.25
    assert body["logit_bias"] == {"13": -100.0, "7": 2.5}
    assert body["top_logprobs"] == 4 and body["temperature"] == 0.7


async def test_completions_forward_seed_bias_response_format_and_logprobs():
    rec = Recorder(
        text='{"a":1}',
        logprobs={
            "tokens": ['{"', "a"],
            "token_logprobs": [-0.1, -0.2],
            "top_logprobs": [{'{"': -0.1, "{": -2.0, "x": -5.0}, {"a": -0.2, "b": -1.9, "c": -4.0}],
        },
    )
    req = GenerationRequest(
        prompt="json please:",
        seed=3,
        logit_bias=((5, 1.0),),
        top_logprobs=2,
        response_format=ResponseFormat(type="json_object"),
    )
    [gen] = await rec.backend().generate([req])
    body = rec.bodies[0]
    assert rec.paths == ["/v1/completions"]
    assert body["logprobs"] == 2 and body["seed"] == 3 and body["logit_bias"] == {"5": 1.0}
    assert body["response_format"] == {"type": "json_object"}
    assert gen.alternatives == [{'{"': -0.1, "{": -2.0}, {"a": -0.2, "b": -1.9}]


async def test_response_format_json_schema_goes_out_in_openai_shape():
    rec = Recorder()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = ResponseFormat(type="json_schema", schema_text=json.dumps(schema), name="count", strict=True)
    await rec.backend().generate([GenerationRequest(messages=(USER,), response_format=fmt)])
    assert rec.bodies[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "count", "schema": schema, "strict": True},
    }


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("required", "required"),
        ("none", "none"),
        ("get_weather", {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
async def test_tools_and_tool_choice(choice, sent):
    rec = Recorder()
    req = GenerationRequest(
        messages=(USER,), tools=(WEATHER, CLOCK), tool_choice=choice, parallel_tool_calls=False
    )
    await rec.backend().generate([req])
    body = rec.bodies[0]
    assert body["tool_choice"] == sent and body["parallel_tool_calls"] is False
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": json.loads(WEATHER.parameters),
        },
    }
    assert body["tools"][1] == {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    }


async def test_tool_turns_go_out_in_openai_format():
    rec = Recorder()
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    messages = (
        USER,
        ChatTurn(role="assistant", content="", tool_calls=(call,)),
        ChatTurn(role="tool", content='{"temp": 21}', tool_call_id="call_1", name="get_weather"),
    )
    await rec.backend().generate([GenerationRequest(messages=messages, tools=(WEATHER,))])
    sent = rec.bodies[0]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert sent[2] == {
        "role": "tool",
        "content": '{"temp": 21}',
        "tool_call_id": "call_1",
        "name": "get_weather",
    }


def _calls_message(content=None):
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }


async def test_a_forced_call_becomes_the_canonical_list_the_contract_accepts():
    rec = Recorder(message=_calls_message())
    req = GenerationRequest(messages=(USER,), tools=(WEATHER,), tool_choice="get_weather")
    [gen] = await rec.backend().generate([req])
    assert gen.text == '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    check = check_answer(req, gen.text, gen.finish_reason)
    assert check.valid and check.tool_calls[0].name == "get_weather"
    assert json.loads(check.tool_calls[0].arguments) == {"city": "Paris"}


async def test_an_auto_call_keeps_its_content_before_the_tagged_calls():
    rec = Recorder(message=_calls_message(content="Let me check."))
    req = GenerationRequest(messages=(USER,), tools=(WEATHER,))
    [gen] = await rec.backend().generate([req])
    assert (
        gen.text
        == 'Let me check.<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>'
    )
    check = check_answer(req, gen.text, gen.finish_reason)
    assert check.valid and check.content == "Let me check." and len(check.tool_calls) == 1


async def test_chat_top_logprobs_become_ranked_alternatives():
    logprobs = {
        "content": [
            {
                "token": "o",
                "logprob": -0.3,
                "top_logprobs": [
                    {"token": "a", "logprob": -2.0},
                    {"token": "o", "logprob": -0.3},
                    {"token": "u", "logprob": -3.0},
                ],
            },
            {"token": "k", "logprob": -0.1, "top_logprobs": [{"token": "k", "logprob": -0.1}]},
        ]
    }
    rec = Recorder(logprobs=logprobs)
    [gen] = await rec.backend().generate([GenerationRequest(messages=(USER,), top_logprobs=2)])
    assert gen.tokens == ["o", "k"] and gen.token_logprobs == [-0.3, -0.1]
    assert gen.alternatives == [{"o": -0.3, "a": -2.0}, {"k": -0.1}]
    assert list(gen.alternatives[0]) == ["o", "a"]  # most likely first
    [plain] = await Recorder(logprobs=logprobs).backend().generate([GenerationRequest(messages=(USER,))])
    assert plain.alternatives == [] and plain.top_logprobs == [-0.3, -0.1]
