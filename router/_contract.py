"""The output contract of a request: what its answer must be, and whether an answer is.

A request asks for free text, a JSON value (``response_format``) or tool calls (``tools``
with ``tool_choice``). Both tiers decode under the same constraint (``decoding_schema``:
the JSON Schema a grammar engine enforces), and the cascade checks every student answer
against the contract (``check_answer``): an answer that does not parse, breaks its schema,
calls an unknown function or was cut at ``max_tokens`` escalates whatever its confidence,
so it never reaches the client.

Tool calls have one canonical text, the format SmolLM2 was trained on (a JSON list of
``{"name", "arguments"}`` objects): a forced call (``required`` or a named function) is
that list alone, decoded after the template's ``<tool_call>`` opener; a free (``auto``)
answer may hold it between ``<tool_call>`` and ``</tool_call>``. The teacher's calls are
stored, trained on and compared in this text, so train = serve for tool calls as for chat.

Pure: no model, no Ray; ``jsonschema`` does the validation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema

from router._types import GenerationRequest, ToolCall, ToolSpec

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "AnswerCheck",
    "answer_agrees",
    "canonical_json",
    "check_answer",
    "decoding_schema",
    "forced_tool",
    "schema_error",
    "schema_text",
    "single_call",
    "structural_agreement",
    "structural_key",
    "tool_calls_text",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_CALLS = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S)


def canonical_json(value: Any) -> str:
    """One text per JSON value (sorted keys, no spaces): equal values, equal texts."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_text(schema: Any) -> str:
    """A schema's compact text with its key order kept: the grammar writes an object's
    properties in the order its schema declares them, as OpenAI's structured outputs do
    (``canonical_json`` sorts, for comparing values, never for a schema)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def schema_error(schema: Any) -> str | None:
    """Why ``schema`` is not a usable JSON Schema (None: it is)."""
    if not isinstance(schema, dict | bool):
        return "a JSON Schema must be an object"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        return f"invalid JSON Schema at {where}: {exc.message}"
    return None


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> Any:
    schema = json.loads(schema_text)
    return jsonschema.validators.validator_for(schema)(schema)


def forced_tool(request: GenerationRequest) -> bool:
    """Must the answer be tool calls (``required`` or a named function)?"""
    return bool(request.tools) and request.tool_choice not in ("none", "auto")


def single_call(request: GenerationRequest) -> bool:
    """At most one call: ``parallel_tool_calls: false``, or a named function (as vLLM's
    server decodes a named ``tool_choice``: that function, once)."""
    return not request.parallel_tool_calls or request.tool_choice not in ("none", "auto", "required")


def _callable(request: GenerationRequest) -> tuple[ToolSpec, ...]:
    if request.tool_choice in ("none", "auto", "required"):
        return request.tools
    return tuple(t for t in request.tools if t.name == request.tool_choice)


def decoding_schema(request: GenerationRequest) -> dict[str, Any] | None:
    """The JSON Schema the engine must decode under, or None (free text, or ``json_object``
    which engines enforce with their own any-object grammar)."""
    fmt = request.response_format
    if fmt is not None:
        return json.loads(fmt.schema_text) if fmt.schema_text is not None else None
    if not forced_tool(request):
        return None
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": json.loads(t.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in _callable(request)
    ]
    item = variants[0] if len(variants) == 1 else {"anyOf": variants}
    schema: dict[str, Any] = {"type": "array", "items": item, "minItems": 1}
    if single_call(request):
        schema["maxItems"] = 1
    return schema


@dataclass(frozen=True)
class AnswerCheck:
    """What an answer is under its request's contract."""

    valid: bool
    reason: str | None = None
    """Why it is not valid (``None`` when it is): ``truncated``, ``not_json``, ``schema``,
    ``unknown_tool``, ``tool_arguments``, ``no_tool_call``, ``too_many_tool_calls``."""
    content: str | None = None
    """The text the client gets as ``content`` (None for a forced tool call)."""
    tool_calls: tuple[ToolCall, ...] = ()
    parsed: Any = None
    """The JSON value of a ``json`` answer."""


def _invalid(reason: str) -> AnswerCheck:
    return AnswerCheck(False, reason)


def _parse_calls(text: str, request: GenerationRequest) -> AnswerCheck:
    try:
        value = json.loads(text)
    except ValueError:
        return _invalid("not_json")
    items = value if isinstance(value, list) else [value]
    specs = {t.name: t for t in _callable(request)}
    calls: list[ToolCall] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return _invalid("not_json")
        spec = specs.get(item["name"])
        if spec is None:
            return _invalid("unknown_tool")
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):  # some models (and OpenAI) spell them as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return _invalid("tool_arguments")
        if not isinstance(arguments, dict) or not _validator(spec.parameters).is_valid(arguments):
            return _invalid("tool_arguments")
        calls.append(ToolCall(name=spec.name, arguments=json.dumps(arguments, ensure_ascii=False)))
    if not calls:
        return _invalid("no_tool_call")
    if len(calls) > 1 and single_call(request):
        return _invalid("too_many_tool_calls")
    return AnswerCheck(True, content=None, tool_calls=tuple(calls))


def check_answer(request: GenerationRequest, text: str, finish_reason: str) -> AnswerCheck:
    """Is ``text`` an answer the contract allows? Free text always is (the cascade's
    confidence judges it); structured answers must be complete and well-formed."""
    fmt = request.response_format
    if fmt is not None:
        if finish_reason != "stop":
            return _invalid("truncated")
        try:
            value = json.loads(text)
        except ValueError:
            return _invalid("not_json")
        if fmt.schema_text is None:
            if not isinstance(value, dict):
                return _invalid("schema")
        elif not _validator(fmt.schema_text).is_valid(value):
            return _invalid("schema")
        return AnswerCheck(True, content=text, parsed=value)
    if forced_tool(request):
        if finish_reason != "stop":
            return _invalid("truncated")
        return _parse_calls(text, request)
    if request.offers_tools and TOOL_CALL_OPEN in text:
        blocks = _CALLS.findall(text)
        if finish_reason != "stop" or TOOL_CALL_CLOSE not in text:
            return _invalid("truncated")
        calls: list[ToolCall] = []
        for block in blocks:
            check = _parse_calls(block.strip(), request)
            if not check.valid:
                return check
            calls.extend(check.tool_calls)
        if len(calls) > 1 and single_call(request):
            return _invalid("too_many_tool_calls")
        rest = _CALLS.sub("", text).strip()
        return AnswerCheck(True, content=rest or None, tool_calls=tuple(calls))
    return AnswerCheck(True, content=text)


def tool_calls_text(calls: Sequence[ToolCall], *, forced: bool) -> str:
    """The canonical answer text of ``calls`` (what the student is trained to write)."""
    items = []
    for call in calls:
        try:
            arguments: Any = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = call.arguments
        items.append({"name": call.name, "arguments": arguments})
    body = json.dumps(items, ensure_ascii=False)
    return body if forced else f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def structural_key(request: GenerationRequest, text: str, finish_reason: str = "stop") -> str | None:
    """What two answers must share to agree structurally: the parsed JSON value, or the
    called functions with their parsed arguments (order kept). None for free text (the
    text metrics judge it) and for an answer that breaks the contract."""
    if request.output_kind == "text":
        return None
    check = check_answer(request, text, finish_reason)
    if not check.valid:
        return None
    if request.response_format is not None:
        return canonical_json(check.parsed)
    calls = [[c.name, json.loads(c.arguments)] for c in check.tool_calls]
    return canonical_json({"content": check.content if not calls else None, "calls": calls})


def answer_agrees(
    request: GenerationRequest,
    answer: str,
    finish_reason: str,
    reference: str,
    agree: Callable[[str, str], bool],
    reference_finish: str = "stop",
) -> bool:
    """Does ``answer`` agree with ``reference``? Structurally for a JSON or tool-call
    request (the same parsed value; the same functions with the same parsed arguments: key
    order and spacing are no disagreement; an answer that breaks the contract agrees with
    nothing), by ``agree`` (the configured text metric) for free text. The gate and the
    shadow auditor both judge by it."""
    if request.output_kind == "text":
        return agree(answer, reference)
    key = structural_key(request, answer, finish_reason)
    return key is not None and key == structural_key(request, reference, reference_finish)


def structural_agreement(request: GenerationRequest, answer: str, reference: str) -> bool | None:
    """Do ``answer`` and ``reference`` agree as structures? None for free-text requests."""
    if request.output_kind == "text":
        return None
    key = structural_key(request, answer)
    return key is not None and key == structural_key(request, reference)
