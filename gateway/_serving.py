"""The OpenAI-compatible serving logic, free of HTTP and of Ray.

Routes call one method here and map what comes back (a response model or a stream) to
HTTP; errors are raised as Distillery errors and mapped in one place (``gateway.errors``).
Streaming: with ``server.stream_mode: live`` a streamed answer goes through the streaming
cascade (``router._streaming``): the student's tokens flow once its commit rule decides,
an escalation relays the teacher as it writes. A whole (non-streamed) text answer is
decided the same way, so an escalation cancels the student at its commit point instead of
waiting for its whole answer. With ``replay`` the whole cascade runs first and its answer
is cut into chunks.

Live quality: every answer is recorded in the ledger before its response leaves (so it
can be rated by ``POST /v1/feedback`` at once); the shadow audit is offered only once the
response has been sent (``Served.after``, run as Starlette's background task), so an audit
never delays the client it samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from feedback import SpoolWriteError
from gateway._feedback_sink import FeedbackSink
from gateway._ledger import IssuedAnswer, Ledger, feedback_fingerprint
from gateway._live import LiveStream, chat_sse, completion_sse, routing_of
from gateway._structured import answer_message, chat_fields, response_format, sampling_fields
from gateway.errors import BadRequest, FeedbackDisabled, ModelNotFound, ResponseNotFound
from gateway.metrics import GatewayMetrics
from gateway.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    FeedbackRequest,
    FeedbackResponse,
    FinishReason,
    ModelCard,
    ModelList,
    RoutingInfo,
    ToolCallDelta,
    UsageInfo,
)
from gateway.settings import ServerConfig
from router import (
    CascadeResult,
    CascadeRouter,
    Decided,
    Generation,
    GenerationRequest,
    ShadowAuditor,
    StreamBroken,
    StreamEnd,
    StreamingCascade,
    Tier,
)
from router.errors import EmptyPrompt, InvalidRequest, TeacherUnavailable

__all__ = ["OpenAIServing", "Served"]

logger = logging.getLogger(__name__)

ModelVersions = Callable[[], dict[str, tuple[str, str]]]


@dataclass(frozen=True)
class Served:
    """What a route sends back: a body or an SSE stream, plus headers for both."""

    body: CompletionResponse | ChatCompletionResponse | None
    stream: AsyncIterator[str] | None
    headers: dict[str, str]
    after: Callable[[], Awaitable[None]] | None = None
    """Run once the response has been sent (the shadow audits' offer)."""


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


class OpenAIServing:
    def __init__(
        self,
        router: CascadeRouter,
        metrics: GatewayMetrics,
        server: ServerConfig,
        model_versions: ModelVersions,
        feedback: FeedbackSink | None = None,
        *,
        auditor: ShadowAuditor | None = None,
        ledger: Ledger | None = None,
        streaming: StreamingCascade | None = None,
    ) -> None:
        self._streaming = streaming if server.stream_mode == "live" else None
        self._early_whole = self._streaming if server.decide_whole_early else None
        self._feedback = feedback
        self._auditor = auditor
        self._ledger = ledger if feedback is not None else None
        self._router = router
        self._metrics = metrics
        self._server = server
        self._model_versions = model_versions
        name = server.served_model_name
        self._tiers: dict[str, Tier | None] = {
            name: None,
            f"{name}-student": "student",
            f"{name}-teacher": "teacher",
        }

    # ---- models -------------------------------------------------------------------
    def list_models(self) -> ModelList:
        versions = self._model_versions()
        cards = []
        for model_id, tier in self._tiers.items():
            version = versions.get(tier or "student", ("", ""))[1] or None
            cards.append(ModelCard(id=model_id, tier=tier or "cascade", version=version))
        return ModelList(data=cards)

    def _tier_for(self, model: str) -> Tier | None:
        if model not in self._tiers:
            raise ModelNotFound(f"The model '{model}' does not exist; available: {', '.join(self._tiers)}")
        return self._tiers[model]

    def _max_tokens(self, value: int | None, default: int) -> int:
        max_tokens = default if value is None else value
        if max_tokens < 1:
            raise BadRequest("max_tokens must be at least 1", "invalid_value", "max_tokens")
        if max_tokens > self._server.max_tokens_limit:
            raise BadRequest(
                f"max_tokens={max_tokens} exceeds this server's limit of {self._server.max_tokens_limit}",
                "invalid_value",
                "max_tokens",
            )
        return max_tokens

    @staticmethod
    def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
        if stop is None:
            return ()
        return (stop,) if isinstance(stop, str) else tuple(stop)

    def _routing(self, result: CascadeResult) -> RoutingInfo:
        policy = self._router.policy
        threshold = result.threshold if result.decision is not None else policy.threshold
        return RoutingInfo(
            tier=result.tier,
            escalated=result.escalated,
            confidence=None if result.decision is None else round(result.decision.confidence, 6),
            threshold=threshold,
            scorer=policy.scorer,
            model_version=result.generation.model_version,
            low_confidence=result.low_confidence,
            decided_at_tokens=result.decided_at_tokens,
        )

    @staticmethod
    def _headers(infos: Sequence[RoutingInfo]) -> dict[str, str]:
        return {
            "x-distillery-tier": ",".join(i.tier for i in infos),
            "x-distillery-confidence": ",".join(
                "" if i.confidence is None else f"{i.confidence:.6f}" for i in infos
            ),
            "x-distillery-model-version": ",".join(i.model_version for i in infos),
        }

    async def _route(
        self,
        endpoint: str,
        request: GenerationRequest,
        tier: Tier | None,
        label: str | None = None,
        *,
        early: bool = False,
    ) -> CascadeResult:
        """One whole answer. ``early``: a text answer the cascade may decide on its
        student's prefix (``server.decide_whole_early``), so an escalation does not wait
        for the whole student answer; the request's logprobs are not asked for."""
        started = time.perf_counter()
        request, route = self._labelled(request, label)
        with self._counted_errors(endpoint):
            if early and tier is None and self._early_whole is not None and request.output_kind == "text":
                result = await self._decided_early(request, self._early_whole)
            else:
                result = await self._router.route(request, force=tier)
        self._record(endpoint, request, result, route, started)
        return result

    async def _route_each(
        self,
        endpoint: str,
        requests: Sequence[GenerationRequest],
        tier: Tier | None,
        label: str | None,
        *,
        early: bool,
    ) -> list[CascadeResult]:
        """``_route`` for each of a request's answers (prompts x n), concurrently; the usual
        one-answer request is awaited directly (no task to gather)."""
        if len(requests) == 1:
            return [await self._route(endpoint, requests[0], tier, label, early=early)]
        routed = (self._route(endpoint, r, tier, label, early=early) for r in requests)
        return list(await asyncio.gather(*routed))

    async def _decided_early(self, request: GenerationRequest, streaming: StreamingCascade) -> CascadeResult:
        """The streaming cascade, drained: the same decision a streamed request gets."""
        try:
            async with contextlib.aclosing(streaming.stream(request, whole=True)) as events:
                async for event in events:
                    if isinstance(event, StreamEnd):
                        if event.late_doubt:
                            self._metrics.observe_late_doubt(event.result.generation.model_version)
                        return event.result
        except StreamBroken as broken:
            # A tier failed after its first piece. Nothing has reached this client, so the
            # whole-answer cascade answers it, with its fallbacks (the failure is counted).
            logger.warning("%s; answering through the whole-answer cascade", broken)
            return await self._router.route(request)
        raise RuntimeError("the streaming cascade ended without its answer")

    def _labelled(
        self, request: GenerationRequest, label: str | None
    ) -> tuple[GenerationRequest, str | None]:
        """The route before the cascade: the student's answer is judged by its route's bar."""
        route = self._feedback.route_label(request, label) if self._feedback is not None else label
        if route is not None and request.route != route:
            request = request.model_copy(update={"route": route})
        return request, route

    @contextlib.contextmanager
    def _counted_errors(self, endpoint: str) -> Iterator[None]:
        """A request that fails before any tier answered, counted by whose failure it was."""
        try:
            yield
        except InvalidRequest:
            self._metrics.observe_error(endpoint, "client_error")
            raise
        except TeacherUnavailable:
            self._metrics.observe_error(endpoint, "teacher_error")
            raise
        except Exception:
            self._metrics.observe_error(endpoint, "error")
            raise

    def _record(
        self,
        endpoint: str,
        request: GenerationRequest,
        result: CascadeResult,
        route: str | None,
        started: float,
    ) -> None:
        """The answer's metrics and its feedback event."""
        self._metrics.observe(endpoint, result, time.perf_counter() - started, route)
        if self._feedback is not None:
            policy = self._router.policy
            # A SpoolWriteError is counted and logged at CRITICAL by the producer; the
            # client still gets its answer.
            with contextlib.suppress(SpoolWriteError):
                self._feedback.record(endpoint, request, result, result.threshold, policy.scorer, route)

    def _live_requested(self, stream: bool, n: int) -> bool:
        """One streamed answer (``n`` choices stream through the replay path)."""
        return self._streaming is not None and stream and n == 1

    async def _open_live(
        self,
        endpoint: str,
        request: GenerationRequest,
        tier: Tier | None,
        label: str | None,
        principal: str,
        response_id: str,
    ) -> tuple[LiveStream, GenerationRequest, Callable[[], Awaitable[None]]]:
        """The streaming cascade's stream, opened up to its ``Decided`` (failures before it
        are HTTP errors, counted as ``_route`` counts them); the hooks that record the
        answer when it ends; the audit offer to run after the response."""
        assert self._streaming is not None
        started = time.perf_counter()
        request, route = self._labelled(request, label)
        events = self._streaming.stream(request, force=tier)
        with self._counted_errors(endpoint):
            first = await anext(events)
        if not isinstance(first, Decided):  # the cascade's contract: a decision before any text
            await events.aclose()
            raise RuntimeError(f"the streaming cascade opened with {type(first).__name__}")
        self._metrics.observe_stream_timing(first.tier, time.perf_counter() - started, "decision")
        offers: list[Callable[[], Awaitable[None]]] = []
        routed = request
        last_text = started

        def on_text(tier: str, at: float, first_text: bool) -> None:
            nonlocal last_text
            self._metrics.observe_stream_timing(
                tier, at - last_text, "first_token" if first_text else "inter_token"
            )
            last_text = at

        def on_end(end: StreamEnd) -> None:
            result = end.result
            self._record(endpoint, routed, result, route, started)
            if end.late_doubt:
                self._metrics.observe_late_doubt(result.generation.model_version)
            offer = self._issued(response_id, [(routed, result)], label, principal)
            if offer is not None:
                offers.append(offer)

        def on_break(reason: str) -> None:
            self._metrics.observe_error(endpoint, reason)

        async def after() -> None:
            for offer in offers:
                await offer()

        return LiveStream(first, events, on_end, on_break, on_text), request, after

    def _issued(
        self,
        response_id: str,
        routed: Sequence[tuple[GenerationRequest, CascadeResult]],
        label: str | None,
        principal: str,
    ) -> Callable[[], Awaitable[None]] | None:
        """Records the answers in the ledger; returns the audit offer to run after the send."""
        if self._ledger is not None:
            for index, (request, result) in enumerate(routed):
                student, teacher = result.student_answer, result.teacher_answer
                answer = IssuedAnswer(
                    request=request,
                    tier=result.tier,
                    student_answer=student.text if student else None,
                    student_version=student.model_version if student else None,
                    teacher_answer=teacher.text if teacher else None,
                    teacher_version=teacher.model_version if teacher else None,
                    label=label,
                    principal=principal,
                )
                self._ledger.record(response_id, index, answer)
        auditor = self._auditor
        if auditor is None:
            return None

        async def offer() -> None:  # async: Starlette runs a sync background task in a thread
            try:
                for request, result in routed:
                    auditor.offer(request, result, label)
            except Exception:  # the response is sent; a failed offer only loses an audit
                logger.exception("offering an audit failed")

        return offer

    # ---- /v1/feedback ----------------------------------------------------------------
    async def rate(self, body: FeedbackRequest, principal: str = "anonymous") -> FeedbackResponse:
        """Records the application's rating of one answer it was given (idempotent)."""
        if self._ledger is None or self._feedback is None:
            raise FeedbackDisabled(
                "feedback is not recorded by this gateway (the feedback stream or ratings are off)"
            )
        issued = await self._ledger.lookup(body.id, body.index, principal)
        if issued is None:
            raise ResponseNotFound(
                "no answer with this id and index can be rated: it was never issued to this API key,"
                " or it is older than the feedback window"
            )
        fingerprint = feedback_fingerprint(body.id, body.index, body.score, body.correction, body.comment)
        repeat = issued.last_rating == fingerprint
        if not repeat:
            try:
                self._feedback.record_rating(issued, body.score, body.correction, body.comment)
            except SpoolWriteError as exc:
                raise FeedbackDisabled("the feedback could not be recorded right now; retry shortly") from exc
            await self._ledger.mark(body.id, body.index, fingerprint)
            self._metrics.observe_rating(issued.tier, body.score, body.correction is not None)
        return FeedbackResponse(
            id=f"fb-{fingerprint}",
            response_id=body.id,
            index=body.index,
            status="unchanged" if repeat else "recorded",
        )

    # ---- /v1/completions ------------------------------------------------------------
    async def completion(self, req: CompletionRequest, principal: str = "anonymous") -> Served:
        tier = self._tier_for(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise EmptyPrompt("prompt must be a non-empty string or list of strings")
        if len(prompts) > self._server.max_prompts_per_request:
            raise BadRequest(
                f"at most {self._server.max_prompts_per_request} prompts per request",
                "invalid_value",
                "prompt",
            )
        if req.stream and len(prompts) > 1:
            raise BadRequest("stream=true takes a single prompt", "invalid_value", "prompt")
        for p in prompts:
            if not p.strip():
                raise EmptyPrompt("the prompt is empty")
        max_tokens = self._max_tokens(req.max_tokens, 16)
        n = self._choices(req.n)
        if req.stream and n > 1:
            raise BadRequest("stream=true takes n=1 on /v1/completions", "invalid_value", "n")
        if len(prompts) * n > self._server.max_prompts_per_request:
            raise BadRequest(
                f"at most {self._server.max_prompts_per_request} answers per request (prompts x n)",
                "invalid_value",
                "n",
            )
        request_id = f"cmpl-{uuid.uuid4().hex}"
        fmt = response_format(req.response_format)
        shaping = sampling_fields(req)
        gen_reqs = [
            choice
            for i, p in enumerate(prompts)
            for choice in self._fan_out(
                GenerationRequest(
                    prompt=p,
                    max_tokens=max_tokens,
                    temperature=req.temperature,
                    top_p=req.top_p,
                    stop=self._stops(req.stop),
                    request_id=f"{request_id}-{i}",
                    response_format=fmt,
                    top_logprobs=req.logprobs or 0,
                    **shaping,
                ),
                n,
            )
        ]
        label = (req.metadata or {}).get("route")
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if self._live_requested(req.stream, len(gen_reqs)) and req.logprobs is None:
            live, routed, after_live = await self._open_live(
                "completions", gen_reqs[0], tier, label, principal, request_id
            )
            info = routing_of(live.decided, self._router.policy.scorer)

            def whole_text(end: StreamEnd) -> str:  # a structured answer, judged whole
                return end.result.generation.text if routed.output_kind != "text" else ""

            usage_of = (lambda end: self._usage([end.result], shared_prompt=False)) if include_usage else None
            stream: AsyncIterator[str] = completion_sse(
                live, request_id, req.model, info, whole_text, usage_of
            )
            return Served(None, stream, self._headers([info]), after_live)
        early = not req.stream and req.logprobs is None
        results = await self._route_each("completions", gen_reqs, tier, label, early=early)
        infos = [self._routing(r) for r in results]
        headers = self._headers(infos)
        after = self._issued(request_id, list(zip(gen_reqs, results, strict=True)), label, principal)
        usage = self._usage(results, shared_prompt=False)
        if req.stream:
            stream = self._completion_stream(
                request_id, req.model, results[0], infos[0], usage if include_usage else None
            )
            return Served(None, stream, headers, after)
        choices = [
            CompletionChoice(
                index=i,
                text=r.generation.text,
                logprobs=self._completion_logprobs(r) if req.logprobs is not None else None,
                finish_reason=r.generation.finish_reason,
            )
            for i, r in enumerate(results)
        ]
        body = CompletionResponse(
            id=request_id, model=req.model, choices=choices, usage=usage, distillery=infos
        )
        return Served(body, None, headers, after)

    @staticmethod
    def _completion_logprobs(result: CascadeResult) -> CompletionLogprobs:
        gen = result.generation
        offsets, pos = [], 0
        for tok in gen.tokens:
            offsets.append(pos)
            pos += len(tok)
        return CompletionLogprobs(
            tokens=gen.tokens,
            token_logprobs=gen.token_logprobs[: len(gen.tokens)],
            top_logprobs=gen.alternatives[: len(gen.tokens)] or None,
            text_offset=offsets,
        )

    async def _completion_stream(
        self, request_id: str, model: str, result: CascadeResult, info: RoutingInfo, usage: UsageInfo | None
    ) -> AsyncIterator[str]:
        created = int(time.time())
        gen = result.generation
        pieces = gen.tokens or ([gen.text] if gen.text else [])
        for i, piece in enumerate(pieces):
            chunk = CompletionChunk(
                id=request_id,
                created=created,
                model=model,
                choices=[CompletionChoice(index=0, text=piece, finish_reason=None)],
                distillery=info if i == 0 else None,
            )
            yield _sse(chunk.model_dump_json(exclude_none=True))
        final = CompletionChunk(
            id=request_id,
            created=created,
            model=model,
            choices=[CompletionChoice(index=0, text="", finish_reason=gen.finish_reason)],
            distillery=None if pieces else info,
        )
        yield _sse(final.model_dump_json(exclude_none=True))
        if usage is not None:
            last = CompletionChunk(id=request_id, created=created, model=model, choices=[], usage=usage)
            yield _sse(last.model_dump_json(exclude_none=True))
        yield _sse("[DONE]")

    # ---- /v1/chat/completions -------------------------------------------------------
    def _choices(self, n: int) -> int:
        if n > self._server.max_n:
            raise BadRequest(
                f"n={n} exceeds this server's limit of {self._server.max_n}", "invalid_value", "n"
            )
        return n

    @staticmethod
    def _fan_out(base: GenerationRequest, n: int) -> list[GenerationRequest]:
        """``n`` choices of one request, each routed on its own (choice ``i`` samples with
        ``seed + i``, so a seeded request is reproducible choice by choice)."""
        if n == 1:
            return [base]
        return [
            base.model_copy(
                update={
                    "request_id": f"{base.request_id}-{i}",
                    "seed": None if base.seed is None else base.seed + i,
                }
            )
            for i in range(n)
        ]

    async def chat(self, req: ChatCompletionRequest, principal: str = "anonymous") -> Served:
        tier = self._tier_for(req.model)
        if not any(m.role == "user" and m.text.strip() for m in req.messages):
            raise EmptyPrompt("messages must contain a non-empty user message")
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        # Left out: up to the server's limit within each tier's context (OpenAI's and vLLM's
        # chat default), never a small fixed cut that truncates JSON answers and tool calls.
        max_tokens = self._max_tokens(asked, self._server.max_tokens_limit)
        n = self._choices(req.n)
        fields = chat_fields(req)
        ignored = sorted(set(req.model_extra or {}))
        if ignored:
            logger.info("chat request fields present but ignored: %s", ", ".join(ignored))
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        base = GenerationRequest(
            max_tokens=max_tokens,
            max_tokens_given=asked is not None,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=self._stops(req.stop),
            request_id=request_id,
            **fields,
        )
        gen_reqs = self._fan_out(base, n)
        label = (req.metadata or {}).get("route")
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if self._live_requested(req.stream, n) and not req.logprobs:
            live, routed, after_live = await self._open_live("chat", base, tier, label, principal, request_id)
            info = routing_of(live.decided, self._router.policy.scorer)

            def whole_message(end: StreamEnd) -> list[ChatDelta]:  # a structured answer, judged whole
                return [] if routed.output_kind == "text" else _message_deltas(routed, end.result.generation)

            usage_of = (lambda end: self._usage([end.result], shared_prompt=True)) if include_usage else None
            stream: AsyncIterator[str] = chat_sse(live, request_id, req.model, info, whole_message, usage_of)
            return Served(None, stream, self._headers([info]), after_live)
        early = not req.stream and not req.logprobs
        results = await self._route_each("chat", gen_reqs, tier, label, early=early)
        infos = [self._routing(r) for r in results]
        headers = self._headers(infos)
        after = self._issued(request_id, list(zip(gen_reqs, results, strict=True)), label, principal)
        usage = self._usage(results, shared_prompt=True)
        if req.stream:
            stream = self._chat_stream(
                request_id, req.model, gen_reqs, results, infos, usage if include_usage else None
            )
            return Served(None, stream, headers, after)
        choices = []
        for i, (g, r) in enumerate(zip(gen_reqs, results, strict=True)):
            message, finish = answer_message(g, r.generation)
            logprobs = self._chat_logprobs(r.generation) if req.logprobs else None
            choices.append(ChatChoice(index=i, message=message, logprobs=logprobs, finish_reason=finish))
        body = ChatCompletionResponse(
            id=request_id,
            model=req.model,
            choices=choices,
            usage=usage,
            distillery=infos[0],
            distillery_choices=infos if n > 1 else None,
        )
        return Served(body, None, headers, after)

    @staticmethod
    def _usage(results: Sequence[CascadeResult], *, shared_prompt: bool) -> UsageInfo:
        """Token usage; the ``n`` choices of one chat prompt count its prompt once."""
        gens = [r.generation for r in results]
        prompt = gens[0].prompt_tokens if shared_prompt else sum(g.prompt_tokens for g in gens)
        completion = sum(g.completion_tokens for g in gens)
        return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    @staticmethod
    def _chat_logprobs(gen: Generation) -> dict[str, Any]:
        content = []
        for i, (t, lp) in enumerate(zip(gen.tokens, gen.token_logprobs, strict=False)):
            alts = gen.alternatives[i] if i < len(gen.alternatives) else {}
            content.append(
                {
                    "token": t,
                    "logprob": lp,
                    "bytes": list(t.encode()),
                    "top_logprobs": [
                        {"token": a, "logprob": alp, "bytes": list(a.encode())} for a, alp in alts.items()
                    ],
                }
            )
        return {"content": content}

    async def _chat_stream(
        self,
        request_id: str,
        model: str,
        requests: Sequence[GenerationRequest],
        results: Sequence[CascadeResult],
        infos: Sequence[RoutingInfo],
        usage: UsageInfo | None,
    ) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(
            index: int,
            delta: ChatDelta,
            finish: FinishReason | None = None,
            routing: RoutingInfo | None = None,
        ) -> str:
            body = ChatCompletionChunk(
                id=request_id,
                created=created,
                model=model,
                choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=finish)],
                distillery=routing,
            )
            return _sse(body.model_dump_json(exclude_none=True))

        for index, (request, result, info) in enumerate(zip(requests, results, infos, strict=True)):
            gen = result.generation
            message, finish = answer_message(request, gen)
            yield chunk(index, ChatDelta(role="assistant", content=""), routing=info)
            if message.tool_calls:
                if message.content:
                    yield chunk(index, ChatDelta(content=message.content))
                for k, call in enumerate(message.tool_calls):
                    delta = ToolCallDelta(
                        index=k,
                        id=call.id,
                        type="function",
                        function={"name": call.function.name, "arguments": call.function.arguments},
                    )
                    yield chunk(index, ChatDelta(tool_calls=[delta]))
            elif message.content == gen.text:
                for piece in gen.tokens or ([gen.text] if gen.text else []):
                    yield chunk(index, ChatDelta(content=piece))
            elif message.content:
                yield chunk(index, ChatDelta(content=message.content))
            yield chunk(index, ChatDelta(), finish)
        if usage is not None:
            final = ChatCompletionChunk(id=request_id, created=created, model=model, choices=[], usage=usage)
            yield _sse(final.model_dump_json(exclude_none=True))
        yield _sse("[DONE]")


def _message_deltas(request: GenerationRequest, gen: Generation) -> list[ChatDelta]:
    """A whole structured answer as chat deltas: its content, then one per tool call."""
    message, _ = answer_message(request, gen)
    deltas = [ChatDelta(content=message.content)] if message.content else []
    for k, call in enumerate(message.tool_calls or []):
        function = {"name": call.function.name, "arguments": call.function.arguments}
        deltas.append(
            ChatDelta(tool_calls=[ToolCallDelta(index=k, id=call.id, type="function", function=function)])
        )
    return deltas
