"""Routing errors (see ``common.errors`` for the whole tree)."""

from __future__ import annotations

from common.errors import DistilleryError

__all__ = [
    "EmptyPrompt",
    "InvalidRequest",
    "PromptTooLong",
    "RoutingError",
    "StudentUnavailable",
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


class TeacherUnavailable(RoutingError):
    """The teacher tier could not answer (down, erroring)."""


class TeacherTimeout(TeacherUnavailable):
    """The teacher did not answer within ``teacher_timeout_s``."""
