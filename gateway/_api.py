"""The FastAPI app: thin routes over ``OpenAIServing``; every error leaves as OpenAI JSON."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import DistilleryError
from gateway._admission import AdmissionMiddleware
from gateway._serving import OpenAIServing, Served
from gateway.auth import AuthConfig, KeyRing
from gateway.errors import client_message, error_headers, error_response, to_error_response, unwrap
from gateway.limits import LimitsConfig
from gateway.metrics import GatewayMetrics
from gateway.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    ModelList,
)

__all__ = ["build_api"]

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 429, 503)
}
_SSE = {"text/event-stream": {"schema": {"type": "string"}}}


_PYDANTIC_TAG = re.compile(r"[\[\]()]|^(str|int|float|bool|list|dict)$")


def _request_id() -> str:
    """Serve's id of the request being handled (sent back as ``x-request-id``), if any."""
    try:
        from ray.serve.context import _get_serve_request_context

        return str(_get_serve_request_context().request_id or "-")
    except Exception:  # outside Serve (unit tests with a plain ASGI client)
        return "-"


def _json_error(status: int, body: ErrorResponse, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    # Drop pydantic's own path tags (a union member "str", "function-after[_utf8(), str]").
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _PYDANTIC_TAG.search(str(p))]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    return (f"{param}: {msg}" if param else msg), param


def _principal(request: Request) -> str:
    """The API key's name admission resolved (``anonymous`` with auth off)."""
    return str(request.scope.get("state", {}).get("principal", "anonymous"))


def _send(served: Served) -> Response:
    after = BackgroundTask(served.after) if served.after is not None else None
    if served.stream is not None:
        return StreamingResponse(
            served.stream, media_type="text/event-stream", headers=served.headers, background=after
        )
    assert served.body is not None
    # pydantic-core writes the JSON (compact, UTF-8, as JSONResponse would): a third of the
    # time of model_dump + json.dumps on the hot path.
    return Response(
        served.body.model_dump_json(), media_type="application/json", headers=served.headers, background=after
    )


def build_api(
    serving: OpenAIServing,
    metrics: GatewayMetrics,
    health: HealthCheck,
    *,
    auth: AuthConfig | None = None,
    limits: LimitsConfig | None = None,
    admin: APIRouter | None = None,
) -> FastAPI:
    auth = auth or AuthConfig()
    app = FastAPI(title="Distillery", version="0.1.0")
    app.add_middleware(
        AdmissionMiddleware,
        keyring=KeyRing(auth),
        limits=limits or LimitsConfig(),
        metrics=metrics,
        public_metrics=auth.public_metrics,
    )
    if admin is not None:
        app.include_router(admin)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        return _json_error(*error_response(400, message, "invalid_request_error", "invalid_request", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status_code, "http_error"
        )
        return _json_error(*error_response(exc.status_code, str(exc.detail), "invalid_request_error", code))

    def _answer(request: Request, exc: BaseException) -> JSONResponse:
        status, body = to_error_response(exc)
        cause = unwrap(exc)
        if status >= 500:  # the client got a generic message; the operator gets the detail
            text = str(cause).strip()
            detail = f"{type(cause).__name__}: {text.splitlines()[0][:500] if text else ''}"
            logger.warning(
                "%s %s answered %d %s (request %s): %s",
                request.method,
                request.url.path,
                status,
                body.error.code,
                _request_id(),
                detail,
                exc_info=not isinstance(cause, DistilleryError),
            )
        return _json_error(status, body, error_headers(exc))

    @app.exception_handler(DistilleryError)
    async def _distillery(request: Request, exc: DistilleryError) -> JSONResponse:
        return _answer(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _answer(request, exc)

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={**_ERROR_RESPONSES, 200: {"content": _SSE}},
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return _send(await serving.completion(body, _principal(request)))

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**_ERROR_RESPONSES, 200: {"content": _SSE}},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return _send(await serving.chat(body, _principal(request)))

    @app.post("/v1/feedback", response_model=FeedbackResponse, responses=_ERROR_RESPONSES)
    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
        return await serving.rate(body, _principal(request))

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return serving.list_models()

    @app.get(
        "/healthz",
        responses={
            200: {"content": {"application/json": {"schema": {"type": "object"}}}},
            503: {"content": {"application/json": {"schema": {"type": "object"}}}},
        },
    )
    async def healthz() -> JSONResponse:
        try:
            detail = await health()
        except Exception as exc:
            logger.warning("health check failed (request %s): %r", _request_id(), exc)
            reason = client_message(str(unwrap(exc)), "a model tier did not answer the health check")
            return JSONResponse(status_code=503, content={"status": "unhealthy", "reason": reason})
        return JSONResponse(content={"status": "ok", **detail})

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
