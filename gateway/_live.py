"""Live SSE streams: the streaming cascade's events (``router._streaming``) as OpenAI
chunks, written as the tiers write them.

``open_live`` pulls the stream's first event (its ``Decided``) before the response
starts, so a failure before any text is an ordinary HTTP error (the cascade's own
fallbacks have run by then) and the ``x-distillery-*`` headers name the tier that
answers. After that nothing can be retracted: a tier that breaks mid-answer ends the
stream with an error event and ``[DONE]``, as vLLM's server does. A client that goes
away cancels the response task, which closes the cascade's stream and, through it, the
tier's generation; it is counted as ``cancelled``, never against a tier.

The SSE framing is the replay path's (``gateway._serving``): a first chunk with the role
(and Distillery's routing info), content chunks, a chunk with ``finish_reason``, the usage
chunk when asked for, ``[DONE]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal

from gateway.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    CompletionChoice,
    CompletionChunk,
    FinishReason,
    RoutingInfo,
    UsageInfo,
)
from router import Chunk, Decided, StreamBroken, StreamEnd

__all__ = ["LiveStream", "chat_sse", "completion_sse", "routing_of"]

Events = AsyncGenerator[Chunk | Decided | StreamEnd, None]


@dataclass
class LiveStream:
    """An opened stream: its decision, the rest of its events, and what to run when it
    ends (``on_end``: metrics, feedback, the ledger) or breaks (``on_break``: the error
    count, by reason: ``student_error``/``teacher_error``/``cancelled``)."""

    decided: Decided
    events: Events
    on_end: Callable[[StreamEnd], None]
    on_break: Callable[[str], None]
    on_text: Callable[[str, float, bool], None] = lambda tier, at, first: None
    """Each text chunk sent: its tier, ``time.perf_counter()`` then, whether it is the first."""


def routing_of(decided: Decided, scorer: str) -> RoutingInfo:
    return RoutingInfo(
        tier=decided.tier,
        escalated=decided.escalated,
        confidence=None if decided.confidence is None else round(decided.confidence, 6),
        threshold=decided.threshold,
        scorer=scorer,
        model_version=decided.model_version,
        low_confidence=decided.low_confidence,
        decided_at_tokens=decided.at_tokens,
    )


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def _error_event(broken: StreamBroken) -> str:
    body = {
        "error": {
            "message": f"the {broken.tier} failed mid-answer; the text above is incomplete",
            "type": "server_error",
            "code": f"{broken.tier}_failed",
        }
    }
    return _sse(json.dumps(body))


async def _relay(live: LiveStream, write: Callable[[Chunk], str]) -> AsyncGenerator[str | StreamEnd, None]:
    """The stream's SSE content lines, then its ``StreamEnd``; an error event when a tier
    breaks; ``cancelled`` when the client goes away (the task is cancelled, or the
    response closes this generator)."""
    ended = False
    try:
        async with aclosing(live.events) as events:
            first = True
            async for item in events:
                if isinstance(item, Chunk):
                    line = write(item)
                    live.on_text(item.tier, time.perf_counter(), first)
                    first = False
                    yield line
                elif isinstance(item, StreamEnd):
                    ended = True
                    live.on_end(item)
                    yield item
    except StreamBroken as broken:
        ended = True
        live.on_break(f"{broken.tier}_error")
        yield _error_event(broken)
        yield _sse("[DONE]")
    finally:
        # The client went away (the task cancelled, or this generator closed) before the
        # stream ended: counted once, as cancelled; the tiers' streams are closed above.
        if not ended:
            live.on_break("cancelled")


async def chat_sse(
    live: LiveStream,
    request_id: str,
    model: str,
    info: RoutingInfo,
    structured: Callable[[StreamEnd], list[ChatDelta]],
    usage: Callable[[StreamEnd], UsageInfo] | None,
) -> AsyncGenerator[str, None]:
    """``structured``: the deltas of an answer the cascade judged whole (tool calls, JSON),
    written once it ended; text answers arrive as ``Chunk``s."""
    created = int(time.time())

    def chunk(
        delta: ChatDelta, finish: FinishReason | None = None, routing: RoutingInfo | None = None
    ) -> str:
        body = ChatCompletionChunk(
            id=request_id,
            created=created,
            model=model,
            choices=[ChatChunkChoice(index=0, delta=delta, finish_reason=finish)],
            distillery=routing,
        )
        return _sse(body.model_dump_json(exclude_none=True))

    yield chunk(ChatDelta(role="assistant", content=""), routing=info)
    async with aclosing(_relay(live, lambda c: chunk(ChatDelta(content=c.text)))) as lines:
        async for line in lines:
            if not isinstance(line, StreamEnd):
                yield line
                continue
            deltas = structured(line)
            for delta in deltas:
                yield chunk(delta)
            finish: FinishReason = (
                "tool_calls" if any(d.tool_calls for d in deltas) else line.result.generation.finish_reason
            )
            yield chunk(ChatDelta(), finish)
            if usage is not None:
                body = ChatCompletionChunk(
                    id=request_id, created=created, model=model, choices=[], usage=usage(line)
                )
                yield _sse(body.model_dump_json(exclude_none=True))
            yield _sse("[DONE]")


async def completion_sse(
    live: LiveStream,
    request_id: str,
    model: str,
    info: RoutingInfo,
    structured: Callable[[StreamEnd], str],
    usage: Callable[[StreamEnd], UsageInfo] | None,
) -> AsyncGenerator[str, None]:
    created = int(time.time())
    first = True

    def chunk(text: str, finish: Literal["stop", "length"] | None = None) -> str:
        nonlocal first
        body = CompletionChunk(
            id=request_id,
            created=created,
            model=model,
            choices=[CompletionChoice(index=0, text=text, finish_reason=finish)],
            distillery=info if first else None,
        )
        first = False
        return _sse(body.model_dump_json(exclude_none=True))

    async with aclosing(_relay(live, lambda c: chunk(c.text))) as lines:
        async for line in lines:
            if not isinstance(line, StreamEnd):
                yield line
                continue
            if text := structured(line):
                yield chunk(text)
            yield chunk("", line.result.generation.finish_reason)
            if usage is not None:
                body = CompletionChunk(
                    id=request_id, created=created, model=model, choices=[], usage=usage(line)
                )
                yield _sse(body.model_dump_json(exclude_none=True))
            yield _sse("[DONE]")
