"""What a local backend feeds the model: one rendering of a request, shared by serving
and training.

A chat request is rendered with the model's own chat template (``add_generation_prompt``)
and tokenized without adding special tokens (the template carries its own), a raw prompt
is tokenized as it is. The transformers and vLLM backends, the retrainer's dataset and
the chat-fidelity test all call these two functions, so the token ids a student is
trained on are the ids it is served with.

Tools: a request with ``tools``, tool calls or tool results is rendered by the model
directory's ``ToolFormat``: through the template's own tool section (``native``), or as
plain turns the template already renders (``prompt``: SmolLM2's ChatML has no tool
section, but it was trained on a system prompt listing the tools and on calls written as
``<tool_call>[...]</tool_call>``). A forced call's prompt ends with the opener, so the
constrained answer is the JSON list alone. A request without any of this renders exactly
as before tools existed, token for token.
"""

from __future__ import annotations

import json
from typing import Any

from common.model_dir import ToolFormat
from router._contract import forced_tool, tool_calls_text
from router._types import ChatTurn, GenerationRequest, ToolSpec
from router.errors import EmptyPrompt

__all__ = ["prompt_token_ids", "render_prompt", "tool_style"]

DEFAULT_TOOL_FORMAT = ToolFormat()


def tool_style(tokenizer: Any, fmt: ToolFormat) -> str:
    if fmt.style != "auto":
        return fmt.style
    template = getattr(tokenizer, "chat_template", None) or ""
    return "native" if isinstance(template, str) and "tools" in template else "prompt"


def _openai_tool(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": json.loads(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _native_turn(turn: ChatTurn) -> dict[str, Any]:
    out: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.loads(c.arguments or "{}")},
            }
            for c in turn.tool_calls
        ]
    if turn.tool_call_id is not None:
        out["tool_call_id"] = turn.tool_call_id
    if turn.name is not None:
        out["name"] = turn.name
    return out


def _prompt_turns(request: GenerationRequest, fmt: ToolFormat) -> list[dict[str, str]]:
    """The conversation as role/content turns only (the ``prompt`` style)."""
    turns: list[dict[str, str]] = []
    messages = list(request.messages or ())
    system_parts = []
    while messages and messages[0].role in ("system", "developer"):
        system_parts.append(messages.pop(0).content)
    if request.offers_tools:
        tools = json.dumps([_openai_tool(t)["function"] for t in request.tools], ensure_ascii=False)
        system_parts.append(fmt.system_prompt.replace("{tools}", tools))
    if system_parts:
        turns.append({"role": "system", "content": "\n\n".join(p for p in system_parts if p)})
    for turn in messages:
        if turn.role == "tool":
            body = f"{fmt.response_open}{turn.content}{fmt.response_close}"
            turns.append({"role": fmt.response_role, "content": body})
        elif turn.tool_calls:
            calls = tool_calls_text(turn.tool_calls, forced=True)
            text = f"{turn.content}\n" if turn.content else ""
            turns.append({"role": turn.role, "content": f"{text}{fmt.call_open}{calls}{fmt.call_close}"})
        else:
            role = "system" if turn.role == "developer" else turn.role
            turns.append({"role": role, "content": turn.content})
    return turns


def render_prompt(tokenizer: Any, request: GenerationRequest, tool_format: ToolFormat | None = None) -> str:
    if request.messages is not None:
        fmt = tool_format or DEFAULT_TOOL_FORMAT
        plain = not request.tools and all(t.plain for t in request.messages)
        if plain:
            turns: list[dict[str, Any]] = [{"role": t.role, "content": t.content} for t in request.messages]
            text = str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
        elif tool_style(tokenizer, fmt) == "native":
            native = [_native_turn(t) for t in request.messages]
            tools = [_openai_tool(t) for t in request.tools] if request.offers_tools else None
            text = str(
                tokenizer.apply_chat_template(native, tools=tools, tokenize=False, add_generation_prompt=True)
            )
        else:
            prompt_turns = _prompt_turns(request, fmt)
            text = str(
                tokenizer.apply_chat_template(prompt_turns, tokenize=False, add_generation_prompt=True)
            )
            if forced_tool(request):
                text += fmt.call_open
    else:
        text = request.prompt or ""
    if not text.strip():
        raise EmptyPrompt("the prompt is empty")
    return text


def prompt_token_ids(
    tokenizer: Any, request: GenerationRequest, tool_format: ToolFormat | None = None
) -> list[int]:
    text = render_prompt(tokenizer, request, tool_format)
    return [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]
