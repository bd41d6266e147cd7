"""Gateway errors and the one mapping from Distillery's error tree to HTTP.

DistilleryError
├── router.errors.InvalidRequest ........ 400 invalid_request_error
│   └── gateway.errors.BadRequest ....... 400 (limits checked at the edge)
├── gateway.errors.ModelNotFound ........ 404 model_not_found
├── gateway.errors.ResponseNotFound ..... 404 response_not_found (POST /v1/feedback: unknown or expired id)
├── gateway.errors.FeedbackDisabled ..... 503 feedback_disabled (no feedback stream configured)
├── deploy.errors.ModelNotFound ......... 404 version_not_found (admin API)
├── deploy.errors.RegistryError ......... 409 registry_conflict (admin API: e.g. nothing to roll back to)
│   └── ControlStoreUnavailable ......... 503 control_store_unavailable (admin API: rollouts paused)
├── router.errors.TeacherUnavailable .... 503 teacher_unavailable (TeacherTimeout: 504-free 503)
│   └── TeacherCircuitOpen .............. 503 teacher_unavailable + Retry-After (breaker open)
└── router.errors.StudentUnavailable .... 503 student_unavailable
    └── StudentCircuitOpen .............. 503 student_unavailable + Retry-After (breaker open)
anything else ........................... 500 internal_error (a bug: logged with traceback)

Every body is written for the client (``to_error_response`` is the one builder): a 5xx
says what failed and when to retry, never why in the server's terms; a 4xx repeats the
message Distillery wrote for that error, after ``client_message`` drops anything that
looks like internals (a traceback, ANSI colour codes, file paths, pids, actor ids: a
remote replica's exception text carries all of them). The detail goes to the log under
the request id the response carries in ``x-request-id``.

Authentication (401), scope (403), body size (413), per-key concurrency (429) and overload
(503) are answered by ``gateway._admission`` before a route runs; ``PayloadTooLarge`` is
the one raised mid-body (a chunked body over the limit), as Starlette's HTTP error so
FastAPI's body parser lets it through.
"""

from __future__ import annotations

import math
import re

from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import DistilleryError
from deploy.errors import ControlStoreUnavailable, RegistryError
from deploy.errors import ModelNotFound as VersionNotFound
from gateway.protocol import ErrorInfo, ErrorResponse
from router.errors import (
    InvalidRequest,
    StudentCircuitOpen,
    StudentUnavailable,
    TeacherCircuitOpen,
    TeacherTimeout,
    TeacherUnavailable,
)

__all__ = [
    "BadRequest",
    "client_message",
    "ModelNotFound",
    "FeedbackDisabled",
    "PayloadTooLarge",
    "ResponseNotFound",
    "error_headers",
    "error_response",
    "to_error_response",
    "unwrap",
]


class BadRequest(InvalidRequest):
    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


class ModelNotFound(DistilleryError):
    pass


class ResponseNotFound(DistilleryError):
    pass


class FeedbackDisabled(DistilleryError):
    pass


class PayloadTooLarge(StarletteHTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


def error_response(
    status: int, message: str, err_type: str, code: str | None = None, param: str | None = None
) -> tuple[int, ErrorResponse]:
    return status, ErrorResponse(error=ErrorInfo(message=message, type=err_type, code=code, param=param))


def unwrap(exc: BaseException) -> BaseException:
    """An error raised in another Serve replica arrives as Ray's wrapper (a subclass of
    the original whose ``str`` is a remote traceback); its ``cause`` is what was raised."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def error_headers(exc: BaseException) -> dict[str, str]:
    """Headers an error response carries: ``Retry-After`` (whole seconds, at least 1) when
    the teacher's circuit breaker is open, so clients back off for its cooldown."""
    exc = unwrap(exc)
    if isinstance(exc, TeacherCircuitOpen | StudentCircuitOpen):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    return {}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_INTERNALS = re.compile(
    r"traceback|\x1b|file \"|site-packages|\.py\b|\bpid[=: ]|actor[_ ]?id|\bactor\(|replica\(|"
    r"ray::|0x[0-9a-f]{6,}|(?:^|\s)/(?:usr|opt|home|root|tmp|var|work)/",
    re.IGNORECASE,
)
_RETRY = "retry later; the request id is in the x-request-id header"


def client_message(text: str, fallback: str) -> str:
    """``text`` if it reads as a message for a client (its first line, without colour
    codes, at most 300 characters), else ``fallback``."""
    stripped = _ANSI.sub("", text).strip()
    first = stripped.splitlines()[0].strip() if stripped else ""
    if not first or _INTERNALS.search(first):
        return fallback
    return first[:300]


def to_error_response(exc: BaseException) -> tuple[int, ErrorResponse]:
    exc = unwrap(exc)
    if isinstance(exc, InvalidRequest):
        message = client_message(str(exc), "the request cannot be processed by this model")
        return error_response(
            400, message, "invalid_request_error", getattr(exc, "code", None), getattr(exc, "param", None)
        )
    if isinstance(exc, ModelNotFound):
        message = client_message(str(exc), "the model does not exist")
        return error_response(404, message, "invalid_request_error", "model_not_found", "model")
    if isinstance(exc, ResponseNotFound):
        message = client_message(str(exc), "no such response")
        return error_response(404, message, "invalid_request_error", "response_not_found", "id")
    if isinstance(exc, FeedbackDisabled):
        message = client_message(str(exc), "feedback is not recorded by this gateway")
        return error_response(503, message, "service_unavailable", "feedback_disabled")
    if isinstance(exc, VersionNotFound):
        message = client_message(str(exc), "no such model version")
        return error_response(404, message, "invalid_request_error", "version_not_found", "version")
    if isinstance(exc, ControlStoreUnavailable):
        return error_response(
            503,
            f"the control store cannot be reached, so rollouts are paused (serving goes on); {_RETRY}",
            "service_unavailable",
            "control_store_unavailable",
        )
    if isinstance(exc, RegistryError):
        message = client_message(str(exc), "the registry refused the change")
        return error_response(409, message, "invalid_request_error", "registry_conflict")
    if isinstance(exc, TeacherTimeout):
        message = client_message(str(exc), "the teacher did not answer in time")
        return error_response(503, f"{message}; {_RETRY}", "service_unavailable", "teacher_timeout")
    if isinstance(exc, TeacherCircuitOpen):
        message = client_message(str(exc), "the teacher is failing and is not called for now")
        return error_response(503, message, "service_unavailable", "teacher_unavailable")
    if isinstance(exc, TeacherUnavailable):
        return error_response(
            503, f"the teacher model is unavailable; {_RETRY}", "service_unavailable", "teacher_unavailable"
        )
    if isinstance(exc, StudentCircuitOpen):
        message = client_message(str(exc), "the student is failing and is not called for now")
        return error_response(503, message, "service_unavailable", "student_unavailable")
    if isinstance(exc, StudentUnavailable):
        return error_response(
            503, f"the student model is unavailable; {_RETRY}", "service_unavailable", "student_unavailable"
        )
    return error_response(
        500,
        "internal error; the request id is in the x-request-id header",
        "internal_error",
        "internal_error",
    )
