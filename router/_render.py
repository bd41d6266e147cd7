"""What a local backend feeds the model: one rendering of a request, shared by serving
and training.

A chat request is rendered with the model's own chat template (``add_generation_prompt``)
and tokenized without adding special tokens (the template carries its own), a raw prompt
is tokenized as it is. The transformers and vLLM backends, the retrainer's dataset and
the chat-fidelity test all call these two functions, so the token ids a student is
trained on are the ids it is served with.
"""

from __future__ import annotations

from typing import Any

from router._types import GenerationRequest
from router.errors import EmptyPrompt

__all__ = ["prompt_token_ids", "render_prompt"]


def render_prompt(tokenizer: Any, request: GenerationRequest) -> str:
    if request.messages is not None:
        turns = [t.model_dump() for t in request.messages]
        text = str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
    else:
        text = request.prompt or ""
    if not text.strip():
        raise EmptyPrompt("the prompt is empty")
    return text


def prompt_token_ids(tokenizer: Any, request: GenerationRequest) -> list[int]:
    return [int(t) for t in tokenizer.encode(render_prompt(tokenizer, request), add_special_tokens=False)]
