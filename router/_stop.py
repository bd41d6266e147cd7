"""How a local backend turns generated ids into a ``Generation``: cut at EOS, at a stop
string or at ``max_tokens``, and score exactly what is kept (plus the EOS when the model
chose to stop). One function, so the transformers and vLLM backends cut and score alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router._types import Generation, GenerationRequest

__all__ = ["to_generation", "truncate_at_stop"]


def truncate_at_stop(tokens: Sequence[str], stop: Sequence[str]) -> tuple[int, bool]:
    """Number of tokens to keep so the text ends before the first stop string.

    Returns ``(kept, stopped)``. Token-granular: a stop string that begins mid-token
    cuts that whole token, which is what OpenAI-compatible servers also do.
    """
    if not stop:
        return len(tokens), False
    text = ""
    for i, tok in enumerate(tokens):
        text += tok
        if any(s and s in text for s in stop):
            return i, True
    return len(tokens), False


def to_generation(
    tokenizer: Any,
    req: GenerationRequest,
    ids: list[int],
    logprobs: list[float],
    prompt_tokens: int,
    *,
    model_id: str,
    model_version: str,
    top_logprobs: list[float] | None = None,
    alternatives: Sequence[Sequence[tuple[int, float]]] | None = None,
) -> Generation:
    """``alternatives``: per generated step, the (token id, log-prob) pairs to report,
    most likely first; kept for the emitted tokens (decoded; a text two ids share keeps
    the likelier one)."""
    eos = tokenizer.eos_token_id
    limit = min(req.max_tokens, len(ids))
    stopped_on_eos = False
    keep = limit
    for i in range(limit):
        if ids[i] == eos:
            keep, stopped_on_eos = i, True
            break
    text_ids = ids[:keep]
    token_strs = [tokenizer.decode([t]) for t in text_ids]
    cut, stopped_on_string = truncate_at_stop(token_strs, req.stop)
    n_scored = keep + 1 if stopped_on_eos and cut == keep else cut
    scored = logprobs[:n_scored]
    text_ids, token_strs = text_ids[:cut], token_strs[:cut]
    return Generation(
        text=tokenizer.decode(text_ids, skip_special_tokens=True),
        tokens=token_strs,
        token_logprobs=[float(x) for x in scored],
        top_logprobs=[float(x) for x in (top_logprobs or [])[:n_scored]],
        alternatives=[_decoded(tokenizer, step) for step in (alternatives or [])[:cut]],
        finish_reason="stop" if (stopped_on_eos or stopped_on_string) else "length",
        prompt_tokens=prompt_tokens,
        completion_tokens=len(text_ids),
        model_id=model_id,
        model_version=model_version,
    )


def _decoded(tokenizer: Any, step: Sequence[tuple[int, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for token_id, logprob in step:
        out.setdefault(tokenizer.decode([token_id]), float(logprob))
    return out
