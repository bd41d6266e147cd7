"""Routing errors (see ``common.errors`` for the whole tree)."""

from __future__ import annotations

from common.errors import DistilleryError

__all__ = [
    "EmptyPrompt",
    "InvalidRequest",
    "ModelImportError",
    "PromptTooLong",
    "RoutingError",
    "ReplicaUnavailable",
    "StudentCircuitOpen",
    "StudentUnavailable",
    "TeacherCircuitOpen",
    "TeacherConnectionError",
    "TeacherHTTPError",
    "TeacherTimeout",
    "TeacherUnavailable",
]


class RoutingError(DistilleryError):
    """Something went wrong answering a request through the cascade."""


class InvalidRequest(RoutingError):
    """The request cannot be served as asked; the client must change it (HTTP 400)."""

    code = "invalid_request"


class EmptyPrompt(InvalidRequest):
    code = "empty_prompt"


class PromptTooLong(InvalidRequest):
    code = "context_length_exceeded"


class StudentUnavailable(RoutingError):
    """The student tier failed; nothing to fall back on but the teacher."""


class StudentCircuitOpen(StudentUnavailable):
    """The student tier's breaker is open and the student was asked for by name: refused
    at once; ``retry_after_s`` is the time left before its probe."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ReplicaUnavailable(RoutingError):
    """A tier's serving replica died or was unreachable under the call (transient: Serve
    starts a replacement, so the call may be retried)."""


class TeacherUnavailable(RoutingError):
    """The teacher tier could not answer (down, erroring)."""


class TeacherTimeout(TeacherUnavailable):
    """The teacher did not answer within ``teacher_timeout_s``."""


class TeacherConnectionError(TeacherUnavailable):
    """The remote teacher could not be reached (refused, reset, closed): transient."""


class TeacherHTTPError(TeacherUnavailable):
    """The remote teacher answered with an HTTP error status.

    429, 502, 503 and 504 are transient (retried); other statuses are not."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TeacherCircuitOpen(TeacherUnavailable):
    """The teacher's circuit breaker is open: the call was not made (fail fast).

    ``retry_after_s`` is the time left before the breaker lets a probe through."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelImportError(DistilleryError, ValueError):
    """A source cannot become a model directory (missing, unreadable, not a causal LM)."""
