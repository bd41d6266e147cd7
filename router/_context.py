"""The per-request check against the model that will answer it: renderable, and within
its context."""

from __future__ import annotations

import logging

from router._backend import Backend
from router._types import GenerationRequest
from router.errors import InvalidRequest, PromptTooLong

__all__ = ["check_fits"]

logger = logging.getLogger(__name__)


def check_fits(backend: Backend, request: GenerationRequest, tier: str) -> GenerationRequest:
    """The request this model answers; raises the client's error (400) for a prompt it
    cannot take.

    Checked per request before batching, so one bad prompt cannot fail a batch. A request
    the model cannot even render or tokenize is the client's error, never a failure of
    the tier: it must not escalate, retry, or count against the teacher's breaker. It is
    classified here, where the cause is known.

    A chat request without ``max_tokens`` (``max_tokens_given`` false) is not refused for
    its budget: the budget shrinks to what this model's context leaves, so the student and
    the teacher each get their own."""
    try:
        prompt_tokens = backend.count_prompt_tokens(request)
    except InvalidRequest:
        raise
    except Exception as exc:
        logger.info("%s cannot tokenize request %s: %r", tier, request.request_id, exc)
        raise InvalidRequest(f"the {tier} model cannot tokenize this prompt") from None
    limit = backend.max_context
    if not request.max_tokens_given:
        room = limit - prompt_tokens
        if room < 1:
            raise PromptTooLong(
                f"this model's context is {limit} tokens; the prompt has {prompt_tokens}, "
                "which leaves no room for an answer"
            )
        return request if request.max_tokens <= room else request.model_copy(update={"max_tokens": room})
    if prompt_tokens + request.max_tokens > limit:
        raise PromptTooLong(
            f"this model's context is {limit} tokens; the prompt has {prompt_tokens} "
            f"and max_tokens asks for {request.max_tokens} more"
        )
    return request
