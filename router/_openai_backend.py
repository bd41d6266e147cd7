"""Backend for any OpenAI-compatible server (an external teacher: vLLM, a hosted API...)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import httpx

from router._types import Generation, GenerationRequest
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
            return sum(len(t.content) for t in request.messages)
        return len(request.prompt or "")

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: GenerationRequest) -> Generation:
        common: dict[str, Any] = {
            "model": self.model_id,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
        }
        if req.stop:
            common["stop"] = list(req.stop)
        if req.messages is not None:
            body = {
                **common,
                "messages": [t.model_dump() for t in req.messages],
                "logprobs": True,
                "top_logprobs": 1,
            }
            path = "/v1/chat/completions"
        else:
            if not (req.prompt or "").strip():
                raise EmptyPrompt("the prompt is empty")
            body = {**common, "prompt": req.prompt, "logprobs": 1}
            path = "/v1/completions"
        try:
            resp = await self._client.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise TeacherTimeout(f"teacher at {self._client.base_url} timed out") from exc
        except httpx.TransportError as exc:
            raise TeacherConnectionError(
                f"teacher at {self._client.base_url} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise TeacherUnavailable(f"teacher at {self._client.base_url} failed: {exc}") from exc
        if resp.status_code != 200:
            raise TeacherHTTPError(
                f"teacher answered HTTP {resp.status_code}: {resp.text[:300]}", resp.status_code
            )
        try:
            return self._parse(resp.json(), chat=req.messages is not None)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TeacherUnavailable(f"teacher sent a malformed response: {exc}") from exc

    def _parse(self, payload: dict[str, Any], *, chat: bool) -> Generation:
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        if chat:
            text = choice["message"]["content"] or ""
            content = (choice.get("logprobs") or {}).get("content") or []
            tokens = [str(c["token"]) for c in content]
            logprobs = [float(c["logprob"]) for c in content]
            top = [
                max([float(c["logprob"]), *(float(t["logprob"]) for t in c.get("top_logprobs") or [])])
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
        finish: Literal["stop", "length"] = "length" if choice.get("finish_reason") == "length" else "stop"
        return Generation(
            text=text,
            tokens=tokens,
            token_logprobs=logprobs,
            top_logprobs=top if len(top) == len(logprobs) else [],
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", len(tokens))),
            model_id=self.model_id,
            model_version=str(payload.get("model") or self.version),
        )

    async def close(self) -> None:
        await self._client.aclose()
