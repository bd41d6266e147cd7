"""Stop-sequence truncation shared by backends that cannot stop on strings natively."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["truncate_at_stop"]


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
