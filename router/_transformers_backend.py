"""CPU (or single-GPU) backend on plain transformers: batched ``generate`` with real log-probs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.errors import ConfigError
from common.model_dir import read_model_version
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

    def render(self, request: GenerationRequest) -> str:
        return render_prompt(self._tokenizer, request)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids the model is fed for ``request`` (the counting tokenizer's)."""
        return prompt_token_ids(self._counter, request)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_ids(request))

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return await asyncio.to_thread(self.generate_sync, requests)

    def generate_sync(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple[bool, float, float], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.sampling_key(), []).append(i)
        with self._lock:
            for key, idxs in groups.items():
                for i, gen in zip(idxs, self._generate_group([requests[i] for i in idxs], key), strict=True):
                    results[i] = gen
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _generate_group(
        self, requests: Sequence[GenerationRequest], key: tuple[bool, float, float]
    ) -> list[Generation]:
        greedy, temperature, top_p = key
        tok = self._tokenizer
        prompts = [self.render(r) for r in requests]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        max_new = max(r.max_tokens for r in requests)
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        )
        out: Any = self._model.generate(
            **enc,
            max_new_tokens=max_new,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            return_dict_in_generate=True,
            output_logits=True,
            **sampling,
        )
        prompt_width = enc["input_ids"].shape[1]
        new_ids = out.sequences[:, prompt_width:]
        # Raw logits -> log-softmax: the model's own distribution, before sampling processors.
        logits = torch.stack(out.logits, dim=1).float()
        logp = torch.log_softmax(logits, dim=-1)
        chosen = logp.gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)
        top = logp.max(dim=-1).values
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        return [
            to_generation(
                self._tokenizer,
                req,
                new_ids[row].tolist(),
                chosen[row].tolist(),
                int(prompt_lens[row]),
                top_logprobs=top[row].tolist(),
                model_id=self.model_id,
                model_version=self.version,
            )
            for row, req in enumerate(requests)
        ]

    async def close(self) -> None:
        self._model = None
