"""The clients users have, unchanged, against the live cascade on the real pair.

SmolLM2-135M-Instruct (the teacher) and a 4-layer student cut from it, served by the real
Serve app with the real engines: the official ``openai`` client with every structured
field, LangChain's ``ChatOpenAI`` (``with_structured_output`` both ways, ``bind_tools``
and a tool-result turn), ``instructor`` in ``TOOLS`` and ``JSON_SCHEMA`` modes, and the
OpenAI Agents SDK running an agent with a function tool to a final answer. Every JSON
answer of a ``json_schema`` request must validate against its schema, whichever tier
gave it (the student is asked for by name too).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from demo import SUPPORT_SYSTEM_PROMPT, TICKET_SCHEMA, TICKET_TOOLS

pytestmark = pytest.mark.integration

TICKET = (
    'Extract the order number, intent and urgency from this ticket as JSON: "My order #4818 arrived damaged."'
)
JSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "ticket", "schema": TICKET_SCHEMA, "strict": True},
}


class Ticket(BaseModel):
    order_number: str = Field(pattern="^[0-9]{4}$")
    intent: Literal["missing", "damaged", "cancel", "billing"]
    urgency: Literal["low", "normal", "high"]


def _v1(real_stack: Any) -> str:
    return f"{real_stack.url}/v1"


@pytest.fixture(scope="module")
def client(real_stack) -> OpenAI:
    return OpenAI(base_url=_v1(real_stack), api_key="unused", timeout=180, max_retries=0)


def _messages(question: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SUPPORT_SYSTEM_PROMPT}, {"role": "user", "content": question}]


@pytest.mark.parametrize("model", ["distillery", "distillery-student", "distillery-teacher"])
def test_every_json_schema_answer_validates_on_every_tier(client, model):
    resp = client.chat.completions.create(
        model=model,
        messages=_messages(TICKET),
        response_format=JSON_FORMAT,
        max_tokens=48,  # type: ignore[arg-type]
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content or ""), TICKET_SCHEMA)


def test_a_request_that_leaves_max_tokens_out_gets_whole_answers(client):
    """The SDKs send no ``max_tokens`` unless told: a JSON answer and a forced tool call must
    not be cut by a small server default (they were, at 16 tokens, on both tiers)."""
    answer = client.chat.completions.create(
        model="distillery",
        messages=_messages(TICKET),
        response_format=JSON_FORMAT,  # type: ignore[arg-type]
    )
    assert answer.choices[0].finish_reason == "stop", answer.choices[0]
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), TICKET_SCHEMA)
    call = client.chat.completions.create(
        model="distillery",
        messages=_messages('Handle this ticket with one tool call: "Please cancel order #2931."'),
        tools=TICKET_TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert call.choices[0].finish_reason == "tool_calls", call.choices[0]
    json.loads(call.choices[0].message.tool_calls[0].function.arguments)  # type: ignore[index,union-attr]


def test_the_openai_client_with_every_field(client):
    resp = client.chat.completions.create(
        model="distillery",
        messages=[
            {"role": "developer", "content": SUPPORT_SYSTEM_PROMPT},
            {"role": "user", "name": "ana", "content": [{"type": "text", "text": TICKET}]},
        ],
        response_format=JSON_FORMAT,  # type: ignore[arg-type]
        n=2,
        seed=11,
        temperature=0.7,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        logit_bias={"0": -1},
        logprobs=True,
        top_logprobs=2,
        max_completion_tokens=48,
    )
    assert len(resp.choices) == 2
    for choice in resp.choices:
        jsonschema.validate(json.loads(choice.message.content or ""), TICKET_SCHEMA)
        assert choice.logprobs is not None and choice.logprobs.content
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert resp.usage is not None and resp.usage.completion_tokens > 0


def test_a_forced_tool_call_then_the_tool_result_turn(client):
    question = 'Handle this ticket with one tool call: "Where is my order #4818? It is late."'
    first = client.chat.completions.create(
        model="distillery",
        messages=_messages(question),
        tools=TICKET_TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=48,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name in {"lookup_order", "escalate_to_human"}  # type: ignore[union-attr]
    json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
    second = client.chat.completions.create(
        model="distillery",
        messages=[
            *_messages(question),
            choice.message.model_dump(exclude_none=True),  # content: null, tool_calls
            {"role": "tool", "tool_call_id": calls[0].id, "content": '{"status": "shipped"}'},
        ],
        tools=TICKET_TOOLS,  # type: ignore[arg-type]
        max_tokens=24,
    )
    assert second.choices[0].finish_reason in {"stop", "length", "tool_calls"}


def test_streaming_with_include_usage_and_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model="distillery",
        messages=_messages('Handle this ticket with one tool call: "Please cancel order #2931."'),
        tools=TICKET_TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "lookup_order"}},
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=48,
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    names = [tc.function.name for d in deltas for tc in d.tool_calls or [] if tc.function]
    assert names == ["lookup_order"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def _tier_health(url: str) -> dict[str, float]:
    """The teacher's breaker state and failed calls, and the student's escalations for an
    error (what a client's bad request must not move)."""
    out = {"breaker_state": 0.0, "teacher_errors": 0.0, "student_error_escalations": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("distillery_teacher_breaker_state"):
            out["breaker_state"] = float(value)
        elif name.startswith("distillery_teacher_errors_total"):
            out["teacher_errors"] += float(value)
        elif name.startswith("distillery_escalations_total") and 'reason="student_error"' in name:
            out["student_error_escalations"] += float(value)
    return out


def test_bad_structured_requests_are_400s_the_client_can_read(client, real_stack):
    """Each bad request is a 400 naming what is wrong, repeated past the breaker's failure
    threshold: the teacher's breaker stays closed, no tier counts a failure, and the next
    good request is answered."""
    import openai

    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}}
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    cases: list[tuple[str, dict[str, Any]]] = [
        (
            "lookup_everything",
            {
                "messages": _messages("hi"),
                "tools": TICKET_TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "lookup_everything"}},
            },
        ),
        (
            "image_url",
            {"messages": [{"role": "user", "content": image}]},
        ),
        ("JSON Schema", {"messages": _messages("hi"), "response_format": bad_schema}),
        ("n=", {"messages": _messages("hi"), "n": 99}),
        ("reasoning_effort", {"messages": _messages("hi"), "reasoning_effort": "high"}),
    ]
    before = _tier_health(real_stack.url)
    for _ in range(6):  # more than the breaker's failure threshold (5)
        for needle, fields in cases:
            with pytest.raises(openai.BadRequestError, match=needle) as caught:
                client.chat.completions.create(model="distillery", **fields)
            error = caught.value.body
            assert isinstance(error, dict) and error.get("type") == "invalid_request_error", error
            assert "Traceback" not in str(error) and "/work" not in str(error)
    assert _tier_health(real_stack.url) == before
    resp = client.chat.completions.create(
        model="distillery", messages=_messages(TICKET), response_format=JSON_FORMAT, max_tokens=48
    )  # type: ignore[arg-type]
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), TICKET_SCHEMA)
    assert httpx.get(f"{real_stack.url}/healthz", timeout=30).status_code == 200


def test_langchain_structured_output_both_methods_and_bind_tools(real_stack):
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=_v1(real_stack), api_key="unused", model="distillery", max_tokens=48, timeout=180
    )  # type: ignore[arg-type]
    prompt = [SystemMessage(SUPPORT_SYSTEM_PROMPT), HumanMessage(TICKET)]
    by_schema = llm.with_structured_output(Ticket).invoke(prompt)  # method="json_schema" (default)
    assert isinstance(by_schema, Ticket)
    by_function = llm.with_structured_output(Ticket, method="function_calling").invoke(prompt)
    assert isinstance(by_function, Ticket)

    @tool
    def lookup_order(order_number: str) -> str:
        """Look up the status of an order by its number."""
        return json.dumps({"order_number": order_number, "status": "shipped"})

    bound = llm.bind_tools([lookup_order], tool_choice="lookup_order")
    question = HumanMessage('Handle this ticket with one tool call: "Where is my order #4818?"')
    called = bound.invoke([SystemMessage(SUPPORT_SYSTEM_PROMPT), question])
    assert called.tool_calls and called.tool_calls[0]["name"] == "lookup_order"
    result = ToolMessage(
        lookup_order.invoke(called.tool_calls[0]["args"]), tool_call_id=called.tool_calls[0]["id"]
    )
    answer = llm.bind_tools([lookup_order]).invoke(
        [SystemMessage(SUPPORT_SYSTEM_PROMPT), question, called, result]
    )
    assert answer.content or answer.tool_calls


@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA"])
def test_instructor_in_both_modes(real_stack, mode):
    import instructor

    patched = instructor.from_openai(
        OpenAI(base_url=_v1(real_stack), api_key="unused", timeout=180, max_retries=0),
        mode=getattr(instructor.Mode, mode),
    )
    ticket = patched.chat.completions.create(
        model="distillery",
        response_model=Ticket,
        messages=_messages(TICKET),
        max_tokens=48,
        max_retries=0,  # type: ignore[arg-type]
    )
    assert isinstance(ticket, Ticket)


def test_the_agents_sdk_runs_an_agent_with_a_function_tool_to_a_final_answer(real_stack):
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    looked_up: list[str] = []

    @function_tool
    def lookup_order(order_number: str) -> str:
        """Look up the status of an order by its number."""
        looked_up.append(order_number)
        return f"Order {order_number} has shipped."

    async def run() -> Any:
        model = OpenAIChatCompletionsModel(
            model="distillery",
            openai_client=AsyncOpenAI(base_url=_v1(real_stack), api_key="unused", timeout=180),
        )
        agent = Agent(
            name="support",
            instructions=SUPPORT_SYSTEM_PROMPT,
            model=model,
            tools=[lookup_order],
            # Call the tool first; the SDK resets tool_choice after a call, so the next turn
            # answers in text (reset_tool_choice, the SDK's default).
            model_settings=ModelSettings(tool_choice="lookup_order", max_tokens=32),
        )
        return await Runner.run(agent, "Where is my order #4818?", max_turns=4)

    result = asyncio.run(run())
    assert looked_up, "the agent never called its tool"
    assert isinstance(result.final_output, str) and result.final_output.strip()
