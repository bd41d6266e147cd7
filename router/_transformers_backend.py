"""CPU (or single-GPU) backend on plain transformers: batched ``generate`` with real log-probs.

Requests with ``plain_decoding`` batch by sampling key as they always did. A request whose
logits are shaped (a JSON grammar, penalties, ``logit_bias``, a seed) is generated with
the requests of an identical decoding key only (``router._logits``), a seeded one alone,
and its processors run on a copy of the logits: the scores stay those of the model's
own distribution.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from common.errors import ConfigError
from common.model_dir import ModelManifest, read_model_version
from router._logits import Grammars, Shaping, check_logit_bias, decoding_key, grammar_key
from router._quantize import apply_torch_scheme, scheme_of
from router._render import prompt_token_ids, render_prompt
from router._stop import to_generation
from router._types import Generation, GenerationRequest

__all__ = ["TransformersBackend", "read_model_version"]


class TransformersBackend:
    """Loads any Hugging Face causal-LM directory and generates in batches.

    ``generate`` runs the forward passes in a worker thread so the Serve replica's event
    loop keeps accepting requests (which ``@serve.batch`` then groups); a lock keeps one
    batch on the model at a time, since torch already uses every core for one batch.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        model_id: str | None = None,
        version: str | None = None,
        device: str = "cpu",
        num_threads: int | None = None,
    ) -> None:
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face model directory at {path}")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model_id = model_id or path.name
        self.version = version or read_model_version(path)
        self._device = torch.device(device)
        # transformers is untyped where it matters here; hold its objects as Any.
        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(path))
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        # A second tokenizer for the event loop's prompt-length checks: a fast tokenizer's
        # padding/truncation state is mutable and shared, so counting on the batch's own
        # tokenizer while a worker thread pads a batch corrupted that batch (seen under load).
        self._counter: Any = AutoTokenizer.from_pretrained(str(path))
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        model = model.to(self._device).eval()
        scheme = scheme_of(path)
        self.quantization = scheme.name if scheme is not None else None
        """The quantization scheme this backend applied at load (``router._quantize``)."""
        if scheme is not None:
            if scheme.engine != "transformers":
                why = f"{path} is quantized with {scheme.name}, which only {scheme.engine} serves"
                raise ConfigError(why)
            model = apply_torch_scheme(model, scheme)
        self._model: Any = model
        self.max_context = int(getattr(self._model.config, "max_position_embeddings", 2048))
        self._lock = threading.Lock()
        manifest = ModelManifest.load(path)
        self._tool_format = manifest.tool_format if manifest is not None else None
        """How this model directory renders tools (``None``: the defaults)."""
        self.vocab_size = int(self._model.config.vocab_size)
        """The width of the model's logits: the ids ``logit_bias`` may name."""
        self._grammars = Grammars(path, self.vocab_size)

    def render(self, request: GenerationRequest) -> str:
        return render_prompt(self._tokenizer, request, self._tool_format)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids the model is fed for ``request`` (the counting tokenizer's)."""
        return prompt_token_ids(self._counter, request, self._tool_format)

    def check_request(self, request: GenerationRequest) -> None:
        """Refuses (``InvalidRequest``) what this engine cannot honour: ``logit_bias`` ids
        outside the vocabulary, a grammar it cannot build. Called before a request joins
        a batch (``count_prompt_tokens``), so one bad request never fails its batch."""
        check_logit_bias(request, self.vocab_size)
        schema = grammar_key(request)
        if schema is not None:
            self._grammars.compiled(schema)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        if not request.plain_decoding:
            self.check_request(request)
        return len(self.prompt_ids(request))

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return await asyncio.to_thread(self.generate_sync, requests)

    def generate_sync(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        for req in requests:
            if not req.plain_decoding:
                self.check_request(req)
        results: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, req in enumerate(requests):
            key: tuple[Any, ...] = (
                req.sampling_key() if req.plain_decoding else ("shaped", decoding_key(req, i))
            )
            groups.setdefault(key, []).append(i)
        with self._lock:
            for idxs in groups.values():
                group = [requests[i] for i in idxs]
                for i, gen in zip(idxs, self._generate_group(group, group[0].sampling_key()), strict=True):
                    results[i] = gen
        return [r for r in results if r is not None]

    def _shaping(self, request: GenerationRequest, prompt_width: int) -> dict[str, Any]:
        """``generate`` arguments for a shaped group: our processors first, then temperature
        and top-p (transformers would run its own warpers before custom processors)."""
        schema = grammar_key(request)
        grammar = self._grammars.compiled(schema) if schema is not None else None
        processors: list[Any] = [Shaping(request, prompt_width, grammars=self._grammars, grammar=grammar)]
        greedy, temperature, top_p = request.sampling_key()
        if greedy:
            return {"do_sample": False, "logits_processor": LogitsProcessorList(processors)}
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
        return {
            "do_sample": True,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "logits_processor": LogitsProcessorList(processors),
        }

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Draws from ``seed`` (under the backend's lock; the global generator's state is
        restored afterwards, so unseeded requests do not become predictable)."""
        if seed is None:
            yield
            return
        devices = [] if self._device.type == "cpu" else [self._device.index or 0]
        with torch.random.fork_rng(devices=devices, device_type=self._device.type):
            torch.manual_seed(seed)
            yield

    @torch.inference_mode()
    def _generate_group(
        self, requests: Sequence[GenerationRequest], key: tuple[bool, float, float]
    ) -> list[Generation]:
        greedy, temperature, top_p = key
        tok = self._tokenizer
        prompts = [self.render(r) for r in requests]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        max_new = max(r.max_tokens for r in requests)
        prompt_width = enc["input_ids"].shape[1]
        head = requests[0]
        sampling: dict[str, Any]
        if head.plain_decoding:
            sampling = (
                {"do_sample": False}
                if greedy
                else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            )
        else:  # the whole group shares one decoding key
            sampling = self._shaping(head, prompt_width)
        with self._seeded(head.seed):
            out: Any = self._model.generate(
                **enc,
                max_new_tokens=max_new,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                return_dict_in_generate=True,
                output_logits=True,
                **sampling,
            )
        new_ids = out.sequences[:, prompt_width:]
        # Raw logits -> log-softmax: the model's own distribution, before sampling processors.
        logits = torch.stack(out.logits, dim=1).float()
        logp = torch.log_softmax(logits, dim=-1)
        chosen = logp.gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)
        top = logp.max(dim=-1).values
        k = max(r.top_logprobs for r in requests)
        ranked = logp.topk(min(k, logp.shape[-1]), dim=-1) if k else None
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        gens = []
        for row, req in enumerate(requests):
            alternatives = None
            if ranked is not None and req.top_logprobs:
                ids = ranked.indices[row, :, : req.top_logprobs].tolist()
                lps = ranked.values[row, :, : req.top_logprobs].tolist()
                alternatives = [list(zip(i, lp, strict=True)) for i, lp in zip(ids, lps, strict=True)]
            gens.append(
                to_generation(
                    self._tokenizer,
                    req,
                    new_ids[row].tolist(),
                    chosen[row].tolist(),
                    int(prompt_lens[row]),
                    top_logprobs=top[row].tolist(),
                    alternatives=alternatives,
                    model_id=self.model_id,
                    model_version=self.version,
                )
            )
        return gens

    async def close(self) -> None:
        self._model = None
