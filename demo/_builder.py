"""Trains the demo teacher and student from scratch on CPU, deterministically.

Why a hand-written loop and not TRL here: these are pre-training runs on an infinite
synthetic stream (fresh batches every step, loss on the answer only), where a plain
PyTorch loop is simpler and about twice as fast per step as a Trainer. TRL is used where
it earns its keep: re-distilling the student on teacher answers (``retrain/``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from common.model_dir import MANIFEST_FILE
from demo._domain import DemoExample, sample_examples
from demo._tokenizer import build_tokenizer

__all__ = [
    "ModelSpec",
    "TrainReport",
    "evaluate_exact_match",
    "greedy_answers",
    "train_model",
]

MANIFEST_NAME = MANIFEST_FILE


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and training budget of one demo model.

    Parameters:
        name (`str`): directory name and model id (``teacher`` / ``student``).
        skills (`tuple[str, ...]`): skills in the training stream.
        hidden_size, num_layers, num_heads, intermediate_size (`int`): Llama shape.
        steps (`int`): optimisation steps (fresh batch each step).
        batch_size (`int`), lr (`float`), warmup_steps (`int`): AdamW + cosine schedule.
        seed (`int`): seeds data sampling and weight init.
        target_accuracy (`float`): the bar each skill must reach; training stops early
            once every skill clears it on the fixed eval sample.
    """

    name: str
    skills: tuple[str, ...]
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    seed: int = 0
    target_accuracy: float = 0.98
    eval_every: int = 250
    eval_per_skill: int = 200
    max_positions: int = 64

    def config_hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class TrainReport:
    name: str
    steps_run: int
    seconds: float
    accuracy: dict[str, float]
    parameters: int
    config_hash: str
    history: list[dict[str, float]] = field(default_factory=list)


def _llama_config(spec: ModelSpec, vocab_size: int, tok: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
    )


def _batch(
    examples: Sequence[DemoExample], tok: PreTrainedTokenizerBase
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels masked to answer + eos."""
    rows: list[list[int]] = []
    labels: list[list[int]] = []
    for ex in examples:
        p = tok.encode(ex.prompt, add_special_tokens=False)
        a = tok.encode(ex.answer, add_special_tokens=False) + [tok.eos_token_id]
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return ids, mask, lab


@torch.inference_mode()
def greedy_answers(
    model: Any,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 16,
    batch_size: int = 256,
) -> list[str]:
    model.eval()
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        new = gen[:, enc["input_ids"].shape[1] :]
        out.extend(tok.batch_decode(new, skip_special_tokens=True))
    return out


def evaluate_exact_match(
    model: Any,
    tok: PreTrainedTokenizerBase,
    examples: Sequence[DemoExample],
) -> dict[str, float]:
    answers = greedy_answers(model, tok, [e.prompt for e in examples])
    hits: dict[str, list[bool]] = {}
    for ex, got in zip(examples, answers, strict=True):
        hits.setdefault(ex.skill, []).append(got.strip() == ex.answer)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def train_model(
    spec: ModelSpec,
    out_dir: Path,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainReport:
    """Trains ``spec`` from scratch and saves a standard HF model directory."""
    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    eval_rng = random.Random(10_000 + spec.seed)
    tok = build_tokenizer()
    model: Any = LlamaForCausalLM(_llama_config(spec, len(tok), tok))  # type: ignore[no-untyped-call]
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return spec.lr * (step + 1) / spec.warmup_steps
        frac = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return spec.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    eval_set = sample_examples(spec.skills, spec.eval_per_skill * len(spec.skills), eval_rng)
    history: list[dict[str, float]] = []
    accuracy: dict[str, float] = {}
    start = time.monotonic()
    step = 0
    for step in range(1, spec.steps + 1):
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1)
        ids, mask, labels = _batch(sample_examples(spec.skills, spec.batch_size, rng), tok)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if progress is not None:
            progress(step, spec.steps, loss.item())
        if step % spec.eval_every == 0 or step == spec.steps:
            accuracy = evaluate_exact_match(model, tok, eval_set)
            history.append({"step": step, "loss": loss.item(), **accuracy})
            if min(accuracy.values()) >= spec.target_accuracy and step >= spec.steps // 3:
                break
    seconds = time.monotonic() - start
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    report = TrainReport(spec.name, step, seconds, accuracy, n_params, spec.config_hash(), history)
    manifest = {
        "name": spec.name,
        "version": f"{spec.name}-{spec.config_hash()[:8]}",
        "skills": list(spec.skills),
        "spec": asdict(spec),
        "report": asdict(report),
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return report
