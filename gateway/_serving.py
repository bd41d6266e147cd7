"""The OpenAI-compatible serving logic, free of HTTP and of Ray.

Routes call one method here and map what comes back (a response model or a stream) to
HTTP; errors are raised as Distillery errors and mapped in one place (``gateway.errors``).
Streaming note: the cascade must see the student's whole answer to score it, so the
chosen answer is generated first and then streamed token by token.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from feedback import SpoolWriteError
from gateway._feedback_sink import FeedbackSink
from gateway._ledger import IssuedAnswer, ResponseLedger, feedback_fingerprint
from gateway.errors import BadRequest, FeedbackDisabled, ModelNotFound, ResponseNotFound
from gateway.metrics import GatewayMetrics
from gateway.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    FeedbackRequest,
    FeedbackResponse,
    ModelCard,
    ModelList,
    RoutingInfo,
    UsageInfo,
)
from gateway.settings import ServerConfig
from router import CascadeResult, CascadeRouter, ChatTurn, GenerationRequest, ShadowAuditor, Tier
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
        ledger: ResponseLedger | None = None,
    ) -> None:
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
        self, endpoint: str, request: GenerationRequest, tier: Tier | None, label: str | None = None
    ) -> CascadeResult:
        started = time.perf_counter()
        try:
            result = await self._router.route(request, force=tier)
        except InvalidRequest:
            self._metrics.observe_error(endpoint, "client_error")
            raise
        except TeacherUnavailable:
            self._metrics.observe_error(endpoint, "teacher_error")
            raise
        except Exception:
            self._metrics.observe_error(endpoint, "error")
            raise
        self._metrics.observe(endpoint, result, time.perf_counter() - started)
        if self._feedback is not None:
            policy = self._router.policy
            # A SpoolWriteError is counted and logged at CRITICAL by the producer; the
            # client still gets its answer.
            with contextlib.suppress(SpoolWriteError):
                self._feedback.record(endpoint, request, result, result.threshold, policy.scorer, label)
        return result

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
    def rate(self, body: FeedbackRequest, principal: str = "anonymous") -> FeedbackResponse:
        """Records the application's rating of one answer it was given (idempotent)."""
        if self._ledger is None or self._feedback is None:
            raise FeedbackDisabled(
                "feedback is not recorded by this gateway (the feedback stream or ratings are off)"
            )
        issued = self._ledger.find(body.id, body.index, principal)
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
            issued.last_rating = fingerprint
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
        request_id = f"cmpl-{uuid.uuid4().hex}"
        gen_reqs = [
            GenerationRequest(
                prompt=p,
                max_tokens=max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                stop=self._stops(req.stop),
                request_id=f"{request_id}-{i}",
            )
            for i, p in enumerate(prompts)
        ]
        label = (req.metadata or {}).get("route")
        results = await asyncio.gather(*(self._route("completions", g, tier, label) for g in gen_reqs))
        infos = [self._routing(r) for r in results]
        headers = self._headers(infos)
        after = self._issued(request_id, list(zip(gen_reqs, results, strict=True)), label, principal)
        if req.stream:
            stream = self._completion_stream(request_id, req.model, results[0], infos[0])
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
        prompt_tokens = sum(r.generation.prompt_tokens for r in results)
        completion_tokens = sum(r.generation.completion_tokens for r in results)
        body = CompletionResponse(
            id=request_id,
            model=req.model,
            choices=choices,
            usage=UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
            distillery=infos,
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
            text_offset=offsets,
        )

    async def _completion_stream(
        self, request_id: str, model: str, result: CascadeResult, info: RoutingInfo
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
        yield _sse("[DONE]")

    # ---- /v1/chat/completions -------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, principal: str = "anonymous") -> Served:
        tier = self._tier_for(req.model)
        if not any(m.role == "user" and m.content.strip() for m in req.messages):
            raise EmptyPrompt("messages must contain a non-empty user message")
        max_tokens = self._max_tokens(
            req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens, 16
        )
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        gen_req = GenerationRequest(
            messages=tuple(ChatTurn(role=m.role, content=m.content) for m in req.messages),
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=self._stops(req.stop),
            request_id=request_id,
        )
        label = (req.metadata or {}).get("route")
        result = await self._route("chat", gen_req, tier, label)
        info = self._routing(result)
        headers = self._headers([info])
        after = self._issued(request_id, [(gen_req, result)], label, principal)
        if req.stream:
            return Served(None, self._chat_stream(request_id, req.model, result, info), headers, after)
        gen = result.generation
        logprobs = None
        if req.logprobs:
            logprobs = {
                "content": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                    for t, lp in zip(gen.tokens, gen.token_logprobs, strict=False)
                ]
            }
        body = ChatCompletionResponse(
            id=request_id,
            model=req.model,
            choices=[
                ChatChoice(
                    index=0,
                    message=ChatResponseMessage(content=gen.text),
                    logprobs=logprobs,
                    finish_reason=gen.finish_reason,
                )
            ],
            usage=UsageInfo(
                prompt_tokens=gen.prompt_tokens,
                completion_tokens=gen.completion_tokens,
                total_tokens=gen.prompt_tokens + gen.completion_tokens,
            ),
            distillery=info,
        )
        return Served(body, None, headers, after)

    async def _chat_stream(
        self, request_id: str, model: str, result: CascadeResult, info: RoutingInfo
    ) -> AsyncIterator[str]:
        created = int(time.time())
        gen = result.generation

        def chunk(delta: ChatDelta, finish: str | None = None, routing: RoutingInfo | None = None) -> str:
            body = ChatCompletionChunk(
                id=request_id,
                created=created,
                model=model,
                choices=[ChatChunkChoice(index=0, delta=delta, finish_reason=finish)],  # type: ignore[arg-type]
                distillery=routing,
            )
            return _sse(body.model_dump_json(exclude_none=True))

        yield chunk(ChatDelta(role="assistant", content=""), routing=info)
        for piece in gen.tokens or ([gen.text] if gen.text else []):
            yield chunk(ChatDelta(content=piece))
        yield chunk(ChatDelta(), gen.finish_reason)
        yield _sse("[DONE]")
