"""Logits shaping for the transformers backend: what vLLM's sampler does per request.

One ``Shaping`` per request group (requests with equal ``decoding_key``) applies, in
vLLM's order: OpenAI's penalties over the generated tokens (``logit -= frequency_penalty
* count + presence_penalty * (count > 0)``), ``logit_bias``, the JSON grammar
(``decoding_schema``, or any JSON object for ``json_object``: xgrammar's token bitmask
over ``json_grammar``), then temperature and top-p. It works
on a copy: ``generate(output_logits=True)`` keeps the very tensor the processors get as
the raw logits, and the backend scores on those (the model's own distribution).

The grammar is the same for both local engines: ``json_grammar`` turns the schema into
xgrammar's EBNF (``xgrammar.Grammar.from_json_schema``), which this backend compiles and
the vLLM backend hands to vLLM (``StructuredOutputsParams(grammar=...)``). It allows at
most ``MAX_WHITESPACE`` whitespace characters between JSON tokens: with vLLM's default
(``json=``: any whitespace) the demo student wrote spaces until ``max_tokens`` on every
structured request, and a model that loops on whitespace never finishes its answer. One
character still admits both compact JSON and the canonical tool-call text
(``json.dumps``: ``", "`` and ``": "``), the two layouts students are trained on.

``Grammars`` holds one ``xgrammar.GrammarCompiler`` per tokenizer (built on first use)
and an LRU of compiled grammars by schema text. Without xgrammar a structured request is
refused (``InvalidRequest``), never decoded unconstrained.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor

from router._contract import decoding_schema, schema_text
from router._types import GenerationRequest
from router.errors import InvalidRequest

__all__ = [
    "ANY_OBJECT",
    "MAX_WHITESPACE",
    "Grammars",
    "Shaping",
    "check_logit_bias",
    "decoding_key",
    "grammar_key",
    "json_grammar",
]

ANY_OBJECT = '{"type": "object"}'
"""``json_object``: the schema vLLM's xgrammar backend compiles for it."""
MAX_WHITESPACE = 1
"""Whitespace characters allowed between two JSON tokens of a constrained answer."""


def grammar_key(request: GenerationRequest) -> str | None:
    """The schema text the answer must match (None: free text). Key order is kept: the
    grammar writes an object's properties in the order its schema declares them."""
    schema = decoding_schema(request)
    if schema is not None:
        return schema_text(schema)
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        return ANY_OBJECT
    return None


@lru_cache(maxsize=256)
def json_grammar(schema_text: str) -> str:
    """xgrammar's EBNF for ``schema_text`` (``InvalidRequest`` if xgrammar cannot build one)."""
    import xgrammar

    try:
        grammar = xgrammar.Grammar.from_json_schema(
            schema_text, any_whitespace=True, max_whitespace_cnt=MAX_WHITESPACE
        )
    except Exception as exc:  # xgrammar raises RuntimeError for what it cannot convert
        raise InvalidRequest(f"this engine cannot enforce the requested JSON Schema: {exc}") from exc
    return str(grammar)


def decoding_key(request: GenerationRequest, index: int) -> tuple[Any, ...]:
    """Requests with equal keys can share one ``generate`` call. A seeded request is alone
    (its draws must not depend on what it was batched with)."""
    return (
        request.sampling_key(),
        grammar_key(request),
        request.presence_penalty,
        request.frequency_penalty,
        request.logit_bias,
        None if request.seed is None else (request.seed, index),
    )


def check_logit_bias(request: GenerationRequest, vocab_size: int) -> None:
    bad = sorted({t for t, _ in request.logit_bias if not 0 <= t < vocab_size})
    if bad:
        raise InvalidRequest(
            f"logit_bias token id(s) {bad} are outside this model's vocabulary (ids 0..{vocab_size - 1})"
        )


class Grammars:
    """Compiled grammars for one tokenizer (thread-safe; the compiler is built on first use)."""

    def __init__(self, model_dir: Path, vocab_size: int, *, maxsize: int = 64) -> None:
        self._model_dir = model_dir
        self._vocab_size = vocab_size
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._compiler: Any = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        try:
            import xgrammar

            self._xgr: Any = xgrammar
            self.unavailable: str | None = None
        except Exception as exc:  # ImportError, or a broken native library
            self._xgr = None
            self.unavailable = f"xgrammar is not importable here ({type(exc).__name__}: {exc})"

    def _build_compiler(self) -> Any:
        # A tokenizer of its own: reading the vocabulary may encode probe texts, and a fast
        # tokenizer shared with a thread that pads a batch must not be touched meanwhile.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self._model_dir))
        info = self._xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=self._vocab_size, stop_token_ids=[tokenizer.eos_token_id]
        )
        return self._xgr.GrammarCompiler(info, max_threads=2)

    def compiled(self, schema_text: str) -> Any:
        """The compiled grammar for ``schema_text`` (``InvalidRequest`` if it cannot be)."""
        if self._xgr is None:
            raise InvalidRequest(
                f"this engine cannot enforce response_format/tool_choice: {self.unavailable}"
            )
        with self._lock:
            hit = self._compiled.get(schema_text)
            if hit is not None:
                self._compiled.move_to_end(schema_text)
                return hit
            if self._compiler is None:
                self._compiler = self._build_compiler()
            ebnf = json_grammar(schema_text)
            try:
                grammar = self._compiler.compile_grammar(ebnf)
            except Exception as exc:
                raise InvalidRequest(f"this engine cannot enforce the requested JSON Schema: {exc}") from exc
            self._compiled[schema_text] = grammar
            if len(self._compiled) > self._maxsize:
                self._compiled.popitem(last=False)
            return grammar

    def matcher(self, grammar: Any) -> Any:
        return self._xgr.GrammarMatcher(grammar)

    def bitmask(self, batch: int) -> torch.Tensor:
        mask: torch.Tensor = self._xgr.allocate_token_bitmask(batch, self._vocab_size)
        return mask

    def apply(self, scores: torch.Tensor, bitmask: torch.Tensor) -> None:
        self._xgr.apply_token_bitmask_inplace(scores, bitmask.to(scores.device))


class Shaping(LogitsProcessor):
    """Penalties, logit bias and grammar for one group of equal requests (one per
    ``generate`` call: the grammar matchers follow that call's rows)."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt_width: int,
        *,
        grammars: Grammars | None = None,
        grammar: Any = None,
    ) -> None:
        self._prompt_width = prompt_width
        self._presence = float(request.presence_penalty)
        self._frequency = float(request.frequency_penalty)
        self._bias_ids = [t for t, _ in request.logit_bias]
        self._bias = [b for _, b in request.logit_bias]
        self._grammars = grammars
        self._grammar = grammar
        self._matchers: list[Any] | None = None
        self._bitmask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone()  # ``scores`` is what generate keeps as the raw logits
        if self._presence or self._frequency:
            generated = input_ids[:, self._prompt_width :]
            if generated.shape[1]:
                counts = torch.zeros_like(out).scatter_add_(
                    1, generated, torch.ones_like(generated, dtype=out.dtype)
                )
                out -= self._frequency * counts + self._presence * (counts > 0).to(out.dtype)
        if self._bias_ids:
            out[:, self._bias_ids] += torch.tensor(self._bias, dtype=out.dtype, device=out.device)
        if self._grammar is not None and self._grammars is not None:
            self._mask(input_ids, out)
        return out  # type: ignore[return-value]

    def _mask(self, input_ids: torch.Tensor, scores: torch.Tensor) -> None:
        grammars = self._grammars
        assert grammars is not None
        if self._matchers is None:
            self._matchers = [grammars.matcher(self._grammar) for _ in range(input_ids.shape[0])]
            self._bitmask = grammars.bitmask(input_ids.shape[0])
        elif input_ids.shape[1] > self._prompt_width:
            for row, matcher in enumerate(self._matchers):
                if matcher.is_terminated():  # the row ended on EOS; generate pads it
                    continue
                token = int(input_ids[row, -1])
                if not matcher.accept_token(token):
                    raise RuntimeError(f"the grammar rejected token {token}, which its own mask allowed")
        assert self._bitmask is not None
        live = [row for row, matcher in enumerate(self._matchers) if not matcher.is_terminated()]
        for row in live:  # a finished row keeps its last mask (EOS allowed)
            self._matchers[row].fill_next_token_bitmask(self._bitmask, row)
        grammars.apply(scores, self._bitmask)
        if live and bool(torch.isinf(scores[live]).all(dim=-1).any()):
            # No token of this vocabulary continues the grammar (a character vocabulary
            # without braces asked for JSON): the request asks what this model cannot
            # write, which says nothing of the tier's health.
            raise InvalidRequest(
                "this model's vocabulary cannot write an answer in the requested format"
                " (response_format or forced tool call)"
            )
