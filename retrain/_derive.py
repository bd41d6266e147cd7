"""``distillery student derive``: a smaller student cut from the teacher, then bootstrapped.

Derivation (DistilBERT / Minitron style): keep a subset of the teacher's decoder layers,
evenly spaced with the first and the last among them, and copy the embeddings, the final
norm and the (tied) head as they are. Same tokenizer and chat template, so the student
reads exactly what the teacher reads, and logit-level distillation (``logit_kd``,
``sft_kd``) is possible. SmolLM2-135M's 30 layers cut to 8 give a 56.6 M-parameter
student that starts at 0% agreement (garbage text): the layers no longer compose.

Bootstrap ("teacher-labelled synthetic SFT"): the teacher answers a seed set of requests
from the workload; complete answers (not cut by the length limit, not empty) become SFT
pairs through the production trainer (``retrain.distill``). A held-out share becomes the
student's ``regression_suite.jsonl``; the training pairs its ``train_reference.jsonl``
(what the retrainer replays and the drift check compares traffic with).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.model_dir import REFERENCE_FILE, ModelManifest, ModelSource, TrainingDefaults, read_model_version
from retrain._dataset import DistillDataset, Pair, save_pairs
from retrain._suite import save_suite
from retrain._train import ProgressFn, TrainResult, distill
from retrain.config import DistillConfig
from router import Backend, generate_requests

__all__ = ["BootstrapResult", "bootstrap_student", "derive_student", "even_layers", "label_with_teacher"]


def even_layers(total: int, keep: int) -> list[int]:
    """``keep`` layer indices spread over ``total``, the first and the last included."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def derive_student(
    teacher_dir: Path,
    out_dir: Path,
    *,
    num_layers: int = 8,
    layers: Sequence[int] | None = None,
    version: str | None = None,
) -> ModelManifest:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    teacher: Any = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    config = teacher.config
    total = int(config.num_hidden_layers)
    keep = list(layers) if layers is not None else even_layers(total, num_layers)
    if sorted(set(keep)) != keep or not all(0 <= i < total for i in keep):
        raise ValueError(f"layers must be increasing indices below {total}, got {keep}")
    student_config = type(config).from_dict({**config.to_dict(), "num_hidden_layers": len(keep)})
    student: Any = type(teacher)(student_config)
    source = teacher.state_dict()
    mapped: dict[str, Any] = {}
    position = {old: new for new, old in enumerate(keep)}
    for name, tensor in source.items():
        parts = name.split(".")
        if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
            old = int(parts[2])
            if old not in position:
                continue
            parts[2] = str(position[old])
        mapped[".".join(parts)] = tensor
    result = student.load_state_dict(mapped, strict=False)
    tied = {"lm_head.weight"} if getattr(student_config, "tie_word_embeddings", False) else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise ValueError(
            f"layer copy did not match the architecture: missing {result.missing_keys[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}"
        )
    student.tie_weights()
    student.generation_config = teacher.generation_config
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    student.save_pretrained(str(staging), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(teacher_dir)).save_pretrained(str(staging))
    parent = ModelManifest.load(teacher_dir)
    teacher_version = read_model_version(teacher_dir)
    manifest = ModelManifest(
        version=version or f"student-{teacher_version.split('-')[-1]}-{len(keep)}l",
        role="student",
        source=ModelSource(
            kind="derived",
            path=str(teacher_dir),
            detail={"layers": keep, "of": total, "seconds": round(time.monotonic() - started, 1)},
        ),
        parent=teacher_version,
        architecture=type(student).__name__,
        num_layers=len(keep),
        params=int(sum(p.numel() for p in student.parameters())),
        chat=bool(parent.chat) if parent else False,
        max_new_tokens=parent.max_new_tokens if parent else None,
    )
    manifest.save(staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return manifest


async def label_with_teacher(
    teacher: Backend,
    pairs: Sequence[Pair],
    *,
    max_tokens: int,
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[list[Pair], int]:
    """The teacher's greedy answer as each pair's completion. Answers that are empty or
    were cut by the length limit are dropped (they would teach the student not to stop);
    returns the labelled pairs and how many were dropped. ``on_batch(done, total)``: after
    each batch (minutes of work on CPU: the caller shows progress)."""
    gens = await generate_requests(
        teacher, [p.to_request(max_tokens) for p in pairs], batch_size=batch_size, on_batch=on_batch
    )
    kept: list[Pair] = []
    for pair, gen in zip(pairs, gens, strict=True):
        if gen.text.strip() and gen.finish_reason == "stop":
            kept.append(replace(pair, completion=gen.text.strip(), source="teacher"))
    return kept, len(pairs) - len(kept)


@dataclass
class BootstrapResult:
    train: TrainResult
    train_examples: int
    suite_examples: int
    by_route: dict[str, int] = field(default_factory=dict)


def bootstrap_student(
    student_dir: Path,
    labelled: Sequence[Pair],
    config: DistillConfig,
    *,
    suite_fraction: float = 0.15,
    training_defaults: TrainingDefaults | None = None,
    progress: ProgressFn | None = None,
    teacher_dir: Path | None = None,
) -> BootstrapResult:
    """SFT of a derived student on teacher-labelled pairs, in place (through a scratch
    directory: the old weights stay until the new ones are saved).

    ``training_defaults`` are written into the student's manifest: what its later
    refreshes train with unless the config says otherwise."""
    rng = random.Random(config.seed)
    unique = list({p.key: p for p in labelled}.values())
    rng.shuffle(unique)
    n_suite = max(1, int(len(unique) * suite_fraction))
    suite, train = unique[:n_suite], unique[n_suite:]
    by_route: dict[str, int] = {}
    for p in train:
        by_route[p.skill or "unlabelled"] = by_route.get(p.skill or "unlabelled", 0) + 1
    dataset = DistillDataset(train, [], len(train), 0, 0, by_route)
    out = student_dir.with_name(student_dir.name + ".bootstrapped")
    result = distill(student_dir, dataset, out, config, progress=progress, teacher_dir=teacher_dir)
    save_pairs(train, out / REFERENCE_FILE)
    save_suite(suite, out)
    manifest = ModelManifest.load(out) or ModelManifest(version=read_model_version(student_dir))
    resolved = config.resolved(student_dir)
    manifest.source = ModelSource(
        kind="bootstrapped",
        path=str(student_dir),
        detail={
            "derived": manifest.source.model_dump() if manifest.source else None,
            "examples": len(train),
            "steps": result.steps,
            "seconds": result.seconds,
            "method": resolved.method,
            "learning_rate": resolved.learning_rate,
        },
    )
    manifest.training = training_defaults or manifest.training
    manifest.save(out)
    shutil.rmtree(student_dir)
    out.rename(student_dir)
    return BootstrapResult(result, len(train), len(suite), by_route)
