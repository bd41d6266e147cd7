"""The ASGI layer in front of every route: authentication, scope, body size, concurrency.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: it adds no task per request and
does not buffer streaming responses, and the slot is released only when the response
(an SSE stream included) has been fully sent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from starlette.responses import JSONResponse

from gateway.auth import KeyRing, Principal, Scope
from gateway.errors import PayloadTooLarge, error_response
from gateway.limits import ConcurrencyLimiter, LimitsConfig
from gateway.metrics import GatewayMetrics

__all__ = ["AdmissionMiddleware", "endpoint_class"]

logger = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
EndpointClass = Literal["public", "inference", "admin"]

_PUBLIC = frozenset(("/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"))


def endpoint_class(path: str, *, public_metrics: bool) -> EndpointClass:
    if path.startswith("/v1/"):
        return "inference"
    if path.startswith("/admin/") or path == "/admin":
        return "admin"
    if path == "/metrics":
        return "public" if public_metrics else "admin"
    return "public"  # /healthz, the schema, and unknown paths (which 404 and reveal nothing)


def _bearer(scope: MutableMapping[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _content_length(scope: MutableMapping[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keyring: KeyRing,
        limits: LimitsConfig,
        metrics: GatewayMetrics,
        *,
        public_metrics: bool = True,
    ) -> None:
        self._app = app
        self._keyring = keyring
        self._limits = limits
        self._metrics = metrics
        self._public_metrics = public_metrics
        self._limiter = ConcurrencyLimiter(limits.max_in_flight, limits.max_concurrent_per_key)

    @property
    def limiter(self) -> ConcurrencyLimiter:
        return self._limiter

    async def _reject(
        self,
        scope: MutableMapping[str, Any],
        receive: Receive,
        send: Send,
        status: int,
        reason: str,
        message: str,
        err_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._metrics.rejected.labels(reason).inc()
        code, body = error_response(status, message, err_type, reason)
        await JSONResponse(body.model_dump(), status_code=code, headers=headers)(scope, receive, send)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a route prefix
            path = path[len(root) :] or "/"
        klass = endpoint_class(path, public_metrics=self._public_metrics)
        principal: Principal | None = None
        if klass != "public":
            principal = self._keyring.resolve(_bearer(scope))
            if principal is None:
                await self._reject(
                    scope,
                    receive,
                    send,
                    401,
                    "invalid_api_key",
                    "a valid API key is required: send 'Authorization: Bearer <key>'",
                    "authentication_error",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            needed: Scope = "admin" if klass == "admin" else "inference"
            if needed not in principal.scopes:
                await self._reject(
                    scope,
                    receive,
                    send,
                    403,
                    "insufficient_scope",
                    f"this API key may not call {needed} endpoints",
                    "permission_error",
                )
                return
            scope.setdefault("state", {})["principal"] = principal.name
        length = _content_length(scope)
        if length is not None and length > self._limits.max_body_bytes:
            await self._reject(
                scope,
                receive,
                send,
                413,
                "request_too_large",
                f"request body of {length} bytes exceeds the limit of {self._limits.max_body_bytes}",
                "invalid_request_error",
            )
            return
        if klass != "inference" or principal is None:
            await self._app(scope, self._bounded(receive), send)
            return
        admission = self._limiter.try_acquire(principal.name, principal.max_concurrent)
        if admission != "admitted":
            status, message = (
                (503, "the gateway is at capacity; retry shortly")
                if admission == "overloaded"
                else (429, "too many concurrent requests for this API key")
            )
            await self._reject(
                scope,
                receive,
                send,
                status,
                admission,
                message,
                "service_unavailable" if status == 503 else "rate_limit_error",
                {"Retry-After": str(self._limits.retry_after_s)},
            )
            return
        self._metrics.in_flight.inc()
        try:
            await self._app(scope, self._bounded(receive), send)
        finally:
            self._limiter.release(principal.name)
            self._metrics.in_flight.dec()

    def _bounded(self, receive: Receive) -> Receive:
        """Counts body bytes as they arrive: a chunked body has no Content-Length to check."""
        limit = self._limits.max_body_bytes
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        return bounded_receive
