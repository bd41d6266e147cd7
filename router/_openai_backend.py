"""Backend for any OpenAI-compatible server (an external teacher: vLLM, a hosted API...).

The request goes out as the client sent it: ``response_format``, ``tools`` /
``tool_choice`` / ``parallel_tool_calls``, ``seed``, penalties, ``logit_bias`` and
``top_logprobs`` are forwarded (the remote server enforces them, or refuses with a 400
that comes back as ``TeacherHTTPError``). Tool calls in the answer become the canonical
tool-call text (``router._contract.tool_calls_text``), so a teacher's calls are stored,
compared and trained on in the one format the student writes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal

import httpx

from router._contract import forced_tool, tool_calls_text
from router._types import ChatTurn, Generation, GenerationRequest, TokenDelta, ToolCall, ToolSpec
from router.errors import (
    EmptyPrompt,
    TeacherConnectionError,
    TeacherHTTPError,
    TeacherTimeout,
    TeacherUnavailable,
)

__all__ = ["OpenAIHTTPBackend"]


class OpenAIHTTPBackend:
    """Calls ``/v1/completions`` (prompts) or ``/v1/chat/completions`` (messages) with logprobs.

    The remote tokenizer is unknown here, so ``count_prompt_tokens`` is a character-based
    upper bound and the remote server stays the judge of its own context limit (its 400
    comes back as ``TeacherUnavailable`` with the server's message).
    """

    continuous_batching = True
    """The remote server batches on its side. Batching here as well (Serve's ``@serve.batch``,
    one batch at a time) would make each call wait for the slowest of its batch and the next
    batch wait behind it: one slow teacher request would stall every other one."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_context: int = 1 << 20,
        version: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model_id = model
        self.version = version or model
        self.max_context = max_context
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
        )

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        if request.messages is not None:
            calls = sum(len(c.arguments) for t in request.messages for c in t.tool_calls)
            turns = sum(len(t.content) for t in request.messages) + calls
            return turns + sum(len(t.parameters) + len(t.description) for t in request.tools)
        return len(request.prompt or "")

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    def _request_body(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint path and JSON body for ``req`` (every answer-shaping field the
        client set, and none it did not: a server that does not know a field is not sent it)."""
        body: dict[str, Any] = {
            "model": self.model_id,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        if req.seed is not None:
            body["seed"] = req.seed
        if req.presence_penalty:
            body["presence_penalty"] = req.presence_penalty
        if req.frequency_penalty:
            body["frequency_penalty"] = req.frequency_penalty
        if req.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in req.logit_bias}
        fmt = _response_format(req)
        if fmt is not None:
            body["response_format"] = fmt
        if req.messages is None:
            if not (req.prompt or "").strip():
                raise EmptyPrompt("the prompt is empty")
            body.update(prompt=req.prompt, logprobs=max(1, req.top_logprobs))
            return "/v1/completions", body
        body["messages"] = [_message(t) for t in req.messages]
        if req.tools:
            body["tools"] = [_tool(t) for t in req.tools]
            body["tool_choice"] = _tool_choice(req.tool_choice)
            body["parallel_tool_calls"] = req.parallel_tool_calls
        body.update(logprobs=True, top_logprobs=max(1, req.top_logprobs))
        return "/v1/chat/completions", body

    async def _one(self, req: GenerationRequest) -> Generation:
        path, body = self._request_body(req)
        try:
            resp = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code != 200:
            raise TeacherHTTPError(
                f"teacher answered HTTP {resp.status_code}: {resp.text[:300]}", resp.status_code
            )
        try:
            return self._parse(resp.json(), req)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TeacherUnavailable(f"teacher sent a malformed response: {exc}") from exc

    def _parse(self, payload: dict[str, Any], req: GenerationRequest) -> Generation:
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        alternatives: list[dict[str, float]] = []
        if req.messages is not None:
            message = choice["message"]
            text = _answer_text(message, req)
            content = (choice.get("logprobs") or {}).get("content") or []
            tokens = [str(c["token"]) for c in content]
            logprobs = [float(c["logprob"]) for c in content]
            top = [
                max([float(c["logprob"]), *(float(t["logprob"]) for t in c.get("top_logprobs") or [])])
                for c in content
            ]
            if req.top_logprobs:
                alternatives = [
                    _ranked({str(t["token"]): float(t["logprob"]) for t in c.get("top_logprobs") or []}, req)
                    for c in content
                ]
        else:
            text = choice["text"]
            lp = choice.get("logprobs") or {}
            tokens = [str(t) for t in lp.get("tokens") or []]
            logprobs = [float(x) for x in lp.get("token_logprobs") or [] if x is not None]
            tops = lp.get("top_logprobs") or []
            top = [
                max([chosen, *(float(v) for v in (alts or {}).values())])
                for chosen, alts in zip(logprobs, tops, strict=False)
            ]
            if req.top_logprobs:
                alternatives = [
                    _ranked({str(k): float(v) for k, v in (alts or {}).items()}, req) for alts in tops
                ]
        finish: Literal["stop", "length"] = "length" if choice.get("finish_reason") == "length" else "stop"
        return Generation(
            text=text,
            tokens=tokens,
            token_logprobs=logprobs,
            top_logprobs=top if len(top) == len(logprobs) else [],
            alternatives=alternatives if len(alternatives) == len(tokens) else [],
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", len(tokens))),
            model_id=self.model_id,
            model_version=str(payload.get("model") or self.version),
        )

    async def stream_generation(
        self, req: GenerationRequest
    ) -> AsyncGenerator[TokenDelta | Generation, None]:
        """A text request streamed upstream (``stream: true``): each SSE chunk's text as it
        arrives, then the whole answer built from them (usage from the last chunk when the
        server sends it). Structured requests and ones asking for alternatives answer
        whole: their tool calls and ranked alternatives are parsed from one response.
        Closing the generator closes the upstream stream (the remote server stops)."""
        if req.response_format is not None or req.offers_tools or req.top_logprobs:
            yield await self._one(req)
            return
        path, body = self._request_body(req)
        body.update(stream=True, stream_options={"include_usage": True})
        pieces: list[str] = []
        tokens: list[str] = []
        logprobs: list[float] = []
        finish: Literal["stop", "length"] = "stop"
        usage: dict[str, Any] = {}
        model = self.version
        try:
            async with self._client.stream("POST", path, json=body) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")
                    raise TeacherHTTPError(
                        f"teacher answered HTTP {resp.status_code}: {text[:300]}", resp.status_code
                    )
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise TeacherUnavailable(f"teacher failed mid-answer: {str(chunk['error'])[:300]}")
                    model = str(chunk.get("model") or model)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        piece, chunk_tokens, chunk_lps = _streamed(choice, chat=req.messages is not None)
                        if choice.get("finish_reason") == "length":
                            finish = "length"
                        tokens += chunk_tokens
                        logprobs += chunk_lps
                        if piece:
                            pieces.append(piece)
                            yield TokenDelta(piece, -1, sum(chunk_lps))
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise self._unreachable(exc) from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TeacherUnavailable(f"teacher sent a malformed stream: {exc}") from exc
        yield Generation(
            text="".join(pieces),
            tokens=tokens,
            token_logprobs=logprobs,
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", len(tokens))),
            model_id=self.model_id,
            model_version=model,
        )

    def _unreachable(self, exc: httpx.HTTPError) -> TeacherUnavailable:
        """The teacher's error for an HTTP client failure, by kind (a timeout, a connection
        that could not be made or was dropped, anything else)."""
        where = self._client.base_url
        if isinstance(exc, httpx.TimeoutException):
            return TeacherTimeout(f"teacher at {where} timed out")
        if isinstance(exc, httpx.TransportError):
            return TeacherConnectionError(f"teacher at {where} unreachable: {type(exc).__name__}: {exc}")
        return TeacherUnavailable(f"teacher at {where} failed: {exc}")

    async def close(self) -> None:
        await self._client.aclose()


def _streamed(choice: dict[str, Any], *, chat: bool) -> tuple[str, list[str], list[float]]:
    """One streamed choice's text, tokens and their log-probs (chat or completions shape)."""
    if chat:
        piece = str((choice.get("delta") or {}).get("content") or "")
        content = (choice.get("logprobs") or {}).get("content") or []
        return piece, [str(c["token"]) for c in content], [float(c["logprob"]) for c in content]
    lp = choice.get("logprobs") or {}
    tokens = [str(t) for t in lp.get("tokens") or []]
    return (
        str(choice.get("text") or ""),
        tokens,
        [float(x) for x in lp.get("token_logprobs") or [] if x is not None],
    )


def _response_format(req: GenerationRequest) -> dict[str, Any] | None:
    fmt = req.response_format
    if fmt is None:
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": fmt.name, "strict": fmt.strict}
    if fmt.schema_text is not None:
        spec["schema"] = json.loads(fmt.schema_text)
    return {"type": "json_schema", "json_schema": spec}


def _tool(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": json.loads(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    if tool.strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("none", "auto", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _message(turn: ChatTurn) -> dict[str, Any]:
    """One turn in OpenAI's format (an assistant's calls with their arguments as JSON text,
    and ``content: null`` when the turn says nothing else, as OpenAI's own clients send it)."""
    out: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ]
        if not turn.content:
            out["content"] = None
    if turn.tool_call_id is not None:
        out["tool_call_id"] = turn.tool_call_id
    if turn.name is not None:
        out["name"] = turn.name
    return out


def _answer_text(message: dict[str, Any], req: GenerationRequest) -> str:
    """A chat answer as one text: its content, or its tool calls in the canonical text (the
    list alone for a forced call; after any content between the call tags otherwise)."""
    content = message.get("content") or ""
    raw_calls = message.get("tool_calls") or []
    if not raw_calls:
        return str(content)
    calls = []
    for raw in raw_calls:
        function = raw["function"]
        arguments = function.get("arguments")
        if not isinstance(arguments, str):  # some servers send the object itself
            arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
        calls.append(ToolCall(id=str(raw.get("id") or ""), name=str(function["name"]), arguments=arguments))
    if forced_tool(req):
        return tool_calls_text(calls, forced=True)
    return str(content) + tool_calls_text(calls, forced=False)


def _ranked(alternatives: dict[str, float], req: GenerationRequest) -> dict[str, float]:
    """The ``top_logprobs`` most likely alternatives, most likely first."""
    ranked = sorted(alternatives.items(), key=lambda kv: kv[1], reverse=True)
    return dict(ranked[: req.top_logprobs])
