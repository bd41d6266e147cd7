"""From the OpenAI wire request to the router's request, and from an answer back to an
OpenAI message: messages with text parts and tool calls, ``response_format``, ``tools`` /
``tool_choice`` and the sampling fields. Every refusal is a ``BadRequest`` naming the
parameter, raised before any tier is called (so it never counts against a tier).

Pure: no Ray, no model.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from gateway.errors import BadRequest
from gateway.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ChatResponseMessage,
    FinishReason,
    ResponseFormatParam,
    ResponseToolCall,
    ToolCallFunction,
    ToolParam,
)
from router import ChatTurn, Generation, GenerationRequest
from router._contract import AnswerCheck, check_answer, schema_error, schema_text
from router._types import ResponseFormat, ToolCall, ToolSpec

__all__ = [
    "answer_message",
    "chat_fields",
    "response_format",
    "sampling_fields",
    "to_turns",
]

_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def _arguments(text: str, where: str) -> str:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        raise BadRequest(f"{where}: arguments must be a JSON object's text", "invalid_value", where) from None
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: arguments must be a JSON object's text", "invalid_value", where)
    return json.dumps(value, ensure_ascii=False)


def to_turns(messages: Sequence[ChatMessage]) -> tuple[ChatTurn, ...]:
    turns = []
    for i, m in enumerate(messages):
        calls = tuple(
            ToolCall(
                id=c.id,
                name=c.function.name,
                arguments=_arguments(c.function.arguments, f"messages.{i}.tool_calls.{j}.function"),
            )
            for j, c in enumerate(m.tool_calls or ())
        )
        turns.append(
            ChatTurn(role=m.role, content=m.text, name=m.name, tool_calls=calls, tool_call_id=m.tool_call_id)
        )
    return tuple(turns)


def response_format(param: ResponseFormatParam | None) -> ResponseFormat | None:
    if param is None or param.type == "text":
        return None
    if param.type == "json_object":
        return ResponseFormat(type="json_object")
    assert param.json_schema is not None  # the protocol model requires it
    spec = param.json_schema
    why = schema_error(spec.json_schema)
    if why is not None:
        raise BadRequest(f"response_format.json_schema.schema: {why}", "invalid_value", "response_format")
    return ResponseFormat(
        type="json_schema",
        schema_text=schema_text(spec.json_schema),
        name=spec.name,
        strict=bool(spec.strict),
    )


def _tools(tools: Sequence[ToolParam]) -> tuple[ToolSpec, ...]:
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        fn = tool.function
        where = f"tools.{i}.function"
        if fn.name in seen:
            raise BadRequest(f"{where}.name: the tool {fn.name!r} is defined twice", "invalid_value", where)
        seen.add(fn.name)
        parameters = fn.parameters if fn.parameters is not None else _EMPTY_PARAMETERS
        why = schema_error(parameters)
        if why is not None:
            raise BadRequest(f"{where}.parameters: {why}", "invalid_value", f"{where}.parameters")
        specs.append(
            ToolSpec(
                name=fn.name,
                description=fn.description or "",
                parameters=schema_text(parameters),
                strict=bool(fn.strict),
            )
        )
    return tuple(specs)


def _tool_choice(req: ChatCompletionRequest, tools: tuple[ToolSpec, ...]) -> str:
    choice = req.tool_choice
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, str):
        if choice != "none" and not tools:
            raise BadRequest(f"tool_choice {choice!r} needs tools", "invalid_value", "tool_choice")
        return choice
    name = choice.function.name
    if name not in {t.name for t in tools}:
        known = ", ".join(t.name for t in tools) or "none"
        raise BadRequest(
            f"tool_choice names the function {name!r}, which is not among the tools ({known})",
            "invalid_value",
            "tool_choice",
        )
    return name


def sampling_fields(req: Any) -> dict[str, Any]:
    """``seed``, penalties and ``logit_bias`` of either endpoint's request."""
    bias = tuple(sorted((int(k), float(v)) for k, v in (req.logit_bias or {}).items()))
    return {
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "logit_bias": bias,
    }


def chat_fields(req: ChatCompletionRequest) -> dict[str, Any]:
    """The router-request fields of a chat request beyond prompt, length and sampling."""
    tools = _tools(req.tools or ())
    choice = _tool_choice(req, tools)
    fmt = response_format(req.response_format)
    if fmt is not None and tools and choice != "none":
        raise BadRequest(
            "response_format with tools is not supported: ask for tool calls or for a JSON answer,"
            " not both (or set tool_choice to 'none')",
            "invalid_value",
            "response_format",
        )
    return {
        "messages": to_turns(req.messages),
        "response_format": fmt,
        "tools": tools,
        "tool_choice": choice,
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "top_logprobs": (req.top_logprobs or 0) if req.logprobs else 0,
        **sampling_fields(req),
    }


def answer_message(request: GenerationRequest, gen: Generation) -> tuple[ChatResponseMessage, FinishReason]:
    """The OpenAI message for an answer: tool calls parsed out of the canonical text (with
    fresh ids), ``finish_reason: tool_calls`` when there are any. An answer that breaks
    its contract (only a teacher's, or a student's asked for by name, cut at max_tokens)
    goes out as its text, as OpenAI's own server sends a truncated JSON answer."""
    check: AnswerCheck = check_answer(request, gen.text, gen.finish_reason)
    if not check.valid or not check.tool_calls:
        content = check.content if check.valid and check.content is not None else gen.text
        return ChatResponseMessage(content=content), gen.finish_reason
    calls = [
        ResponseToolCall(
            id=f"call_{uuid.uuid4().hex[:24]}",
            function=ToolCallFunction(name=c.name, arguments=c.arguments),
        )
        for c in check.tool_calls
    ]
    return ChatResponseMessage(content=check.content, tool_calls=calls), "tool_calls"
