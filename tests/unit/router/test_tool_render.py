"""Rendering tools, tool calls and tool results for a template that has no tool section
(SmolLM2's ChatML), and leaving every request without them exactly as it was."""

import json

import pytest

from common.model_dir import ToolFormat
from demo._tokenizer import build_tokenizer
from router import ChatTurn, GenerationRequest, render_prompt
from router._contract import check_answer, decoding_schema, structural_agreement, tool_calls_text
from router._render import tool_style
from router._types import ResponseFormat, ToolCall, ToolSpec

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NATIVE = (
    "{% if tools %}TOOLS={{ tools | tojson }}\n{% endif %}{% for message in messages %}"
    "{{ message['role'] }}:{{ message['content'] }}"
    "{% if message.tool_calls %}CALLS={{ message.tool_calls | tojson }}{% endif %}\n{% endfor %}"
)
LOOKUP = ToolSpec(
    name="lookup_order",
    description="Find an order",
    parameters=json.dumps(
        {"type": "object", "properties": {"order_number": {"type": "string"}}, "required": ["order_number"]}
    ),
)


@pytest.fixture
def chatml():
    tok = build_tokenizer()
    tok.chat_template = CHATML
    return tok


def _request(**kw):
    turns = kw.pop(
        "turns", (ChatTurn(role="system", content="Be brief."), ChatTurn(role="user", content="order 12?"))
    )
    return GenerationRequest(messages=turns, **kw)


def test_a_request_without_tools_renders_exactly_as_the_template_does(chatml):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "order 12?"}]
    expected = chatml.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert render_prompt(chatml, _request()) == expected
    # A JSON request adds nothing to the prompt (the grammar, not the prompt, holds the schema).
    json_req = _request(response_format=ResponseFormat(type="json_object"))
    assert render_prompt(chatml, json_req) == expected


def test_tools_go_into_the_system_turn_and_a_forced_call_opens_the_tool_call(chatml):
    auto = render_prompt(chatml, _request(tools=(LOOKUP,)))
    assert auto.startswith("<|im_start|>system\nBe brief.\n\nYou are an expert in composing functions")
    assert '"name": "lookup_order"' in auto and "<tools>" in auto
    assert auto.endswith("<|im_start|>assistant\n")
    forced = render_prompt(chatml, _request(tools=(LOOKUP,), tool_choice="required"))
    assert forced == auto + "<tool_call>"
    # tool_choice "none": the tools are not offered at all.
    none = render_prompt(chatml, _request(tools=(LOOKUP,), tool_choice="none"))
    assert "lookup_order" not in none


def test_a_tool_loop_renders_calls_and_results_in_the_trained_format(chatml):
    call = ToolCall(id="call_1", name="lookup_order", arguments='{"order_number": "12"}')
    turns = (
        ChatTurn(role="user", content="order 12?"),
        ChatTurn(role="assistant", content="", tool_calls=(call,)),
        ChatTurn(role="tool", content='{"status": "shipped"}', tool_call_id="call_1"),
    )
    text = render_prompt(chatml, _request(turns=turns, tools=(LOOKUP,)))
    call_text = '[{"name": "lookup_order", "arguments": {"order_number": "12"}}]'
    assert f"<|im_start|>assistant\n<tool_call>{call_text}</tool_call>" in text
    assert '<|im_start|>user\n<tool_response>{"status": "shipped"}</tool_response><|im_end|>' in text


def test_a_template_with_a_tool_section_gets_the_tools_natively():
    tok = build_tokenizer()
    tok.chat_template = NATIVE
    assert tool_style(tok, ToolFormat()) == "native"
    text = render_prompt(tok, _request(tools=(LOOKUP,)))
    assert text.startswith('TOOLS=[{"type": "function", "function": {"name": "lookup_order"')
    # The model directory can force the prompt style even then.
    forced = render_prompt(tok, _request(tools=(LOOKUP,)), ToolFormat(style="prompt"))
    assert not forced.startswith("TOOLS=")


def test_the_forced_call_schema_and_the_answer_check_agree_with_the_canonical_text():
    req = _request(tools=(LOOKUP,), tool_choice="lookup_order", parallel_tool_calls=False)
    schema = decoding_schema(req)
    assert schema is not None and schema["maxItems"] == 1
    assert schema["items"]["properties"]["name"] == {"const": "lookup_order"}
    text = tool_calls_text([ToolCall(name="lookup_order", arguments='{"order_number": "7"}')], forced=True)
    check = check_answer(req, text, "stop")
    assert check.valid and check.tool_calls[0].name == "lookup_order"
    assert not check_answer(req, text, "length").valid  # cut at max_tokens: invalid
    two = text[:-1] + ', {"name": "lookup_order", "arguments": {"order_number": "8"}}]'
    assert check_answer(req, two, "stop").reason == "too_many_tool_calls"
    reordered = '[{"arguments": {"order_number": "7"}, "name": "lookup_order"}]'
    assert structural_agreement(req, reordered, text) is True
    assert structural_agreement(req, text.replace('"7"', '"8"'), text) is False
    assert structural_agreement(_request(), "a", "a") is None  # free text: the text metrics judge it
