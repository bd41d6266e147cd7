"""Sequence-level distillation of the student on teacher answers, with TRL's SFTTrainer.

Prompt/completion pairs with ``completion_only_loss``: the loss covers the teacher's
answer (and the end-of-text token TRL appends), never the prompt. A run writes to a
scratch directory and only a finished, saved model leaves it, so a retrain killed mid-way
leaves nothing half-written where the registry looks.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retrain._dataset import REFERENCE_FILE, DistillDataset
from retrain.config import DistillConfig

__all__ = ["TrainResult", "distill"]

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    steps: int
    seconds: float
    final_loss: float | None
    train_examples: int
    dataset_sha256: str


def _progress_callback(progress: ProgressFn, total: int) -> Any:
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            if logs and "loss" in logs:
                progress(int(state.global_step), total, float(logs["loss"]))

    return _Progress()


def distill(
    parent_dir: Path,
    dataset: DistillDataset,
    output_dir: Path,
    config: DistillConfig,
    *,
    progress: ProgressFn | None = None,
    num_threads: int = 2,
    teacher_dir: Path | None = None,
) -> TrainResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(num_threads)
    scratch = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(parent_dir))
    model = AutoModelForCausalLM.from_pretrained(str(parent_dir), dtype=torch.float32)
    if config.method in ("logit_kd", "sft_kd") and teacher_dir is None:
        raise ValueError(f"{config.method} needs the teacher's weights locally (teacher_dir)")
    if config.method == "logit_kd":
        assert teacher_dir is not None
        trainer = _logit_kd_trainer(model, tok, dataset, config, scratch, teacher_dir, progress)
    else:
        trainer = _sft_trainer(model, tok, dataset, config, scratch, progress, teacher_dir)
    rows = dataset.train
    started = time.monotonic()
    out = trainer.train()
    seconds = time.monotonic() - started
    final = scratch / "model"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    for name in (REFERENCE_FILE, "distillery_model.json"):
        if (parent_dir / name).is_file():
            shutil.copy2(parent_dir / name, final / name)
    result = TrainResult(
        output_dir=output_dir,
        steps=int(out.global_step),
        seconds=round(seconds, 2),
        final_loss=float(out.training_loss) if out.training_loss is not None else None,
        train_examples=len(rows),
        dataset_sha256=dataset.sha256,
    )
    report = {
        **asdict(result),
        "output_dir": str(output_dir),
        "config": config.model_dump(),
        "new_examples": dataset.new_examples,
        "replay_examples": dataset.replay_examples,
        "by_skill": dataset.by_skill,
        "history": trainer.state.log_history,
    }
    (final / "training_report.json").write_text(json.dumps(report, indent=2, default=str))
    shutil.rmtree(output_dir, ignore_errors=True)
    final.rename(output_dir)
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def _common_args(config: DistillConfig, scratch: Path, progress: ProgressFn | None) -> dict[str, Any]:
    import torch

    return {
        "output_dir": str(scratch / "checkpoints"),
        "max_steps": config.steps,
        "per_device_train_batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": config.warmup_steps,
        # CPU: no mixed precision, no checkpointing (8x faster than the defaults here).
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "seed": config.seed,
        "data_seed": config.seed,
        "report_to": "none",
        "save_strategy": "steps",
        "save_steps": max(1, config.steps // 2),
        "save_total_limit": 1,
        "logging_steps": max(1, min(50, config.steps // 10)),
        "dataloader_num_workers": 0,
        "disable_tqdm": progress is not None,
    }


def _logit_kd_trainer(
    model: Any,
    tok: Any,
    dataset: DistillDataset,
    config: DistillConfig,
    scratch: Path,
    teacher_dir: Path,
    progress: ProgressFn | None,
) -> Any:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DistillationConfig, DistillationTrainer  # type: ignore[attr-defined]

    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    args = DistillationConfig(
        **_common_args(config, scratch, progress),
        max_completion_length=32,
        beta=config.kd_beta,
        temperature=config.kd_temperature,
    )
    callbacks = [_progress_callback(progress, config.steps)] if progress else None
    rows = [{"prompt": p.prompt} for p in dataset.train]
    return DistillationTrainer(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=callbacks,
    )


def _sft_trainer(
    model: Any,
    tok: Any,
    dataset: DistillDataset,
    config: DistillConfig,
    scratch: Path,
    progress: ProgressFn | None,
    teacher_dir: Path | None = None,
) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # lazy re-exports

    rows = [{"prompt": p.prompt, "completion": p.completion} for p in dataset.train]
    args = SFTConfig(
        **_common_args(config, scratch, progress),
        completion_only_loss=True,
        max_length=int(getattr(model.config, "max_position_embeddings", 512)),
    )
    callbacks = [_progress_callback(progress, config.steps)] if progress else None
    common = {
        "model": model,
        "args": args,
        "train_dataset": Dataset.from_list(rows),
        "processing_class": tok,
        "callbacks": callbacks,
    }
    if config.method != "sft_kd":
        return SFTTrainer(**common)
    import torch
    from transformers import AutoModelForCausalLM

    assert teacher_dir is not None
    teacher: Any = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    teacher.eval()
    trainer_cls = _blended_trainer_class(SFTTrainer)
    return trainer_cls(teacher=teacher, alpha=config.kd_alpha, temperature=config.kd_temperature, **common)


def _blended_trainer_class(base: Any) -> Any:
    """SFTTrainer whose loss is alpha x CE(labels) + (1 - alpha) x T^2 KL(teacher || student)
    over the answer tokens (the ones SFT's collator does not mask with -100)."""
    import torch
    import torch.nn.functional as F

    class BlendedKDTrainer(base):  # type: ignore[misc]
        def __init__(self, *args: Any, teacher: Any, alpha: float, temperature: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._teacher = teacher.to(self.args.device)
            self._alpha = alpha
            self._t = temperature

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            labels = inputs["labels"]
            batch = {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs}
            outputs = model(**batch)
            with torch.no_grad():
                teacher_logits = self._teacher(**batch).logits
            logits, t_logits, target = outputs.logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
            mask = target != -100
            ce = F.cross_entropy(logits[mask], target[mask])
            t = self._t
            student_lp = F.log_softmax(logits[mask] / t, dim=-1)
            teacher_lp = F.log_softmax(t_logits[mask] / t, dim=-1)
            kd = F.kl_div(student_lp, teacher_lp, reduction="batchmean", log_target=True) * t * t
            loss = self._alpha * ce + (1 - self._alpha) * kd
            return (loss, outputs) if return_outputs else loss

    return BlendedKDTrainer
