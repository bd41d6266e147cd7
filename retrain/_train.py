"""Sequence-level distillation of the student on teacher answers, with TRL's SFTTrainer.

Prompt/completion pairs with ``completion_only_loss``: the loss covers the teacher's
answer (and the end-of-text token TRL appends), never the prompt. Chat pairs go to TRL in
its conversational prompt/completion format, so TRL renders them with the student's own
chat template: the same token ids the serving backend feeds the model (``router._render``;
tests/integration/test_real_models.py checks it token for token). Pairs that offer tools
or carry tool turns are rendered by ``router.render_prompt`` itself, with the tool format
of the student's model directory (``ModelManifest.tool_format``), so tool calls too are
trained as they are served. A run writes to a
scratch directory and only a finished, saved model leaves it, so a retrain killed mid-way
leaves nothing half-written where the registry looks.

The output head only where the loss is (``DistillConfig.answer_only_head``): a real
vocabulary makes the head the largest matrix product of a small model (49,152 x 576 per
position for SmolLM2); computing it at answer positions only (hidden states masked, then
the head, then cross-entropy) took a step of 16 chat examples from 2.88 s to 1.66 s here,
the same loss.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.model_dir import MANIFEST_FILE, REFERENCE_FILE, SUITE_FILE, ModelManifest, ToolFormat
from retrain._dataset import DistillDataset, Pair
from retrain.config import DistillConfig

__all__ = ["TrainResult", "distill", "prepare_trainer"]

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


def prepare_trainer(
    parent_dir: Path,
    dataset: DistillDataset,
    config: DistillConfig,
    scratch: Path,
    *,
    progress: ProgressFn | None = None,
    teacher_dir: Path | None = None,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, Any]:
    """The TRL trainer ``distill`` runs, and the tokenizer: its ``train_dataset`` holds the
    token ids the student is trained on (the chat-fidelity test reads them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config.resolved(parent_dir)
    tok = AutoTokenizer.from_pretrained(str(parent_dir))
    model = AutoModelForCausalLM.from_pretrained(str(parent_dir), dtype=torch.float32)
    if config.method in ("logit_kd", "sft_kd") and teacher_dir is None:
        raise ValueError(f"{config.method} needs the teacher's weights locally (teacher_dir)")
    manifest = ModelManifest.load(parent_dir)
    tool_format = manifest.tool_format if manifest is not None else None
    if config.frozen_layers:
        freeze_lower(model, config.frozen_layers)
    if config.method == "logit_kd":
        assert teacher_dir is not None
        trainer = _logit_kd_trainer(model, tok, dataset, config, scratch, teacher_dir, progress, tool_format)
    else:
        trainer = _sft_trainer(model, tok, dataset, config, scratch, progress, teacher_dir, tool_format)
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer, tok


def freeze_lower(model: Any, layers: int) -> None:
    """Stops training the input embeddings (an output head tied to them with them) and the
    lowest ``layers`` decoder layers (``DistillConfig.frozen_layers``). Refuses a count
    that would leave no layer to train: that is a configuration error, not a no-op."""
    blocks = model.get_decoder().layers
    if layers >= len(blocks):
        raise ValueError(f"frozen_layers {layers} leaves none of the student's {len(blocks)} layers to train")
    frozen = [model.get_input_embeddings(), *blocks[:layers]]
    for module in frozen:
        for param in module.parameters():
            param.requires_grad_(False)


def distill(
    parent_dir: Path,
    dataset: DistillDataset,
    output_dir: Path,
    config: DistillConfig,
    *,
    progress: ProgressFn | None = None,
    num_threads: int | None = None,
    teacher_dir: Path | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """``callbacks``: extra ``transformers.TrainerCallback``s (the benchmarks evaluate
    agreement at checkpoints through one); they run in this process, so a call with
    callbacks trains here even when ``config.isolated`` asks for a process of its own
    (``retrain._train_job``)."""
    config = config.resolved(parent_dir).budgeted(len(dataset.train))
    if num_threads:
        config = config.model_copy(update={"num_threads": num_threads})
    if config.method in ("logit_kd", "sft_kd") and teacher_dir is None:  # before any process starts
        raise ValueError(f"{config.method} needs the teacher's weights locally (teacher_dir)")
    if config.isolated and not callbacks:
        from retrain._train_job import train_in_subprocess

        done = train_in_subprocess(
            parent_dir, dataset, output_dir, config, teacher_dir=teacher_dir, progress=progress
        )
        return TrainResult(**{**done, "output_dir": Path(done["output_dir"])})
    import torch

    torch.set_num_threads(config.num_threads)
    scratch = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    trainer, tok = prepare_trainer(
        parent_dir, dataset, config, scratch, progress=progress, teacher_dir=teacher_dir, callbacks=callbacks
    )
    rows = dataset.train
    started = time.monotonic()
    out = trainer.train()
    seconds = time.monotonic() - started
    final = scratch / "model"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    for name in (REFERENCE_FILE, SUITE_FILE, MANIFEST_FILE):
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

    steps = int(config.steps or 1)
    return {
        "output_dir": str(scratch / "checkpoints"),
        "max_steps": steps,
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
        # Nothing resumes a refresh from a checkpoint (a failed one is retried from its
        # parent), and a mid-run save wrote the model and AdamW's state (~700 MB for the
        # real student) beside serving.
        "save_strategy": "no",
        "logging_steps": max(1, min(50, steps // 10)),
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
    tool_format: ToolFormat | None = None,
) -> Any:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DistillationConfig, DistillationTrainer  # type: ignore[attr-defined]

    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    args = DistillationConfig(
        **_common_args(config, scratch, progress),
        max_completion_length=config.max_completion_tokens,
        beta=config.kd_beta,
        temperature=config.kd_temperature,
    )
    callbacks = [_progress_callback(progress, int(config.steps or 1))] if progress else None
    rows = [{"prompt": row["prompt"]} for row in _rows(tok, dataset.train, tool_format)]  # one format
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
    tool_format: ToolFormat | None = None,
) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # lazy re-exports

    rows = _rows(tok, dataset.train, tool_format)
    args = SFTConfig(
        **{
            **_common_args(config, scratch, progress),
            **_micro_batching(config, [_row_size(r) for r in rows]),
        },
        completion_only_loss=True,
        max_length=int(getattr(model.config, "max_position_embeddings", 512)),
    )
    callbacks = [_progress_callback(progress, int(config.steps or 1))] if progress else None
    base = _length_sorted_steps(SFTTrainer, config.seed)
    common = {
        "model": model,
        "args": args,
        "train_dataset": Dataset.from_list(rows),
        "processing_class": tok,
        "callbacks": callbacks,
    }
    teacher: Any = None
    if config.method == "sft_kd":
        import torch
        from transformers import AutoModelForCausalLM

        assert teacher_dir is not None
        teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
        teacher.eval()
    elif not config.answer_only_head:
        return base(**common)
    trainer_cls = _answer_head_trainer_class(base)
    return trainer_cls(
        teacher=teacher,
        alpha=config.kd_alpha if teacher is not None else 1.0,
        temperature=config.kd_temperature,
        **common,
    )


def _plain_chat(pair: Pair) -> bool:
    """Chat turns the template renders as they are: no tools offered, no tool turns."""
    return pair.messages is not None and pair.tool_turns is None and not pair.to_request(1).tools


def _rows(tok: Any, pairs: list[Pair], tool_format: ToolFormat | None = None) -> list[dict[str, Any]]:
    """TRL rows: conversational prompt/completion for plain chat pairs, text otherwise.

    A set that mixes kinds (a chat student replaying text rows, or the reverse; pairs that
    offer tools or carry tool turns) is given to TRL as text, each request rendered through
    the same ``router.render_prompt`` serving uses, with the student's ``tool_format``
    (TRL takes one format per dataset, and its own chat rendering knows nothing of the
    tool format). A forced tool call's prompt then ends with the ``<tool_call>`` opener and
    its completion is the canonical JSON list (TRL appends the end-of-text token), the
    answer the student is served to write under the tools' grammar. A JSON answer's prompt
    is its conversation's: ``response_format`` is enforced by decoding, not rendered."""

    if all(_plain_chat(p) for p in pairs):
        return [
            {
                "prompt": [{"role": r, "content": c} for r, c in p.messages or ()],
                "completion": [{"role": "assistant", "content": p.completion}],
            }
            for p in pairs
        ]
    return [
        {
            "prompt": p.served_prompt(tok, tool_format),
            "completion": p.completion,
        }
        for p in pairs
    ]


MICRO_BATCH_SAVING = 0.4
"""Micro-batches are used only where sorting saves at least this share of a step's padded
token positions: on rows of like length (the bootstrap's support questions) they saved
little and the smaller matrix products cost more (240 steps: 431 s vs 358 s)."""


def _row_size(row: dict[str, Any]) -> int:
    """A row's length in characters (its rendered prompt and answer; tokens follow it)."""
    return len(json.dumps(row["prompt"], ensure_ascii=False)) + len(
        json.dumps(row["completion"], ensure_ascii=False)
    )


def padded_positions(sizes: Sequence[int], step_rows: int, micro_batches: int, seed: int = 0) -> int:
    """Token positions (in ``sizes``' unit) one epoch of ``LengthSortedSteps`` pads to when
    each step of ``step_rows`` runs as ``micro_batches`` micro-batches."""
    order = list(LengthSortedSteps(sizes, step_rows, seed))
    per_micro = -(-step_rows // micro_batches)
    total = 0
    for start in range(0, len(order), step_rows):
        step = [sizes[i] for i in order[start : start + step_rows]]  # longest first
        for m in range(0, len(step), per_micro):
            total += len(step[m : m + per_micro]) * step[m]
    return total


def _micro_batching(config: DistillConfig, sizes: Sequence[int]) -> dict[str, Any]:
    """Per-device batch and accumulation: ``config.micro_batches`` equal micro-batches
    where that saves ``MICRO_BATCH_SAVING`` of the padding on these rows (a step then holds
    ``per_device x accumulation`` rows: the batch size, rounded up to a multiple of the
    micro-batch count), else the whole batch at once."""
    batch = int(config.batch_size or 1)
    micro = min(config.micro_batches, batch)
    if micro > 1 and sizes:
        whole, split = padded_positions(sizes, batch, 1), padded_positions(sizes, batch, micro)
        if split > (1 - MICRO_BATCH_SAVING) * whole:
            micro = 1
    per_device = -(-batch // micro)
    return {"per_device_train_batch_size": per_device, "gradient_accumulation_steps": micro}


class LengthSortedSteps:
    """Indices for a trainer with gradient accumulation: each epoch a fresh random
    permutation, cut into steps of ``step_rows``; inside a step the rows are sorted by
    token length, longest first, so its consecutive micro-batches hold rows of similar
    length. A step holds the rows it would hold unsorted: only the padding changes."""

    def __init__(self, lengths: Sequence[int], step_rows: int, seed: int) -> None:
        self._lengths = list(lengths)
        self._step_rows = step_rows
        self._seed = seed
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._lengths)

    def __iter__(self) -> Any:
        import torch

        generator = torch.Generator().manual_seed(self._seed + self._epoch)
        self._epoch += 1
        order = torch.randperm(len(self._lengths), generator=generator).tolist()
        for start in range(0, len(order), self._step_rows):
            step = order[start : start + self._step_rows]
            yield from sorted(step, key=lambda i: -self._lengths[i])


def _length_sorted_steps(base: Any, seed: int) -> Any:
    """``base`` with ``LengthSortedSteps`` as its training sampler."""

    class LengthSortedTrainer(base):  # type: ignore[misc]
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(ids) for ids in dataset["input_ids"]]
            step_rows = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
            return LengthSortedSteps(lengths, step_rows, seed)

    return LengthSortedTrainer


def _answer_head_trainer_class(base: Any) -> Any:
    """SFTTrainer whose loss applies the output head at answer positions only.

    Loss: alpha x CE(labels) + (1 - alpha) x T^2 KL(teacher || student) over the answer
    tokens (the ones SFT's collator does not mask with -100); alpha = 1 without a teacher
    (plain SFT). Both models' heads run on those positions only."""
    import torch
    import torch.nn.functional as F

    def answer_logits(model: Any, batch: dict[str, Any], mask: Any) -> Any:
        hidden = model.get_decoder()(**batch).last_hidden_state[:, :-1]
        return model.get_output_embeddings()(hidden[mask]).float()

    class AnswerHeadTrainer(base):  # type: ignore[misc]
        def __init__(self, *args: Any, teacher: Any, alpha: float, temperature: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._teacher = teacher.to(self.args.device) if teacher is not None else None
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
            names = ("input_ids", "attention_mask", "position_ids")
            batch: dict[str, Any] = {k: inputs[k] for k in names if k in inputs}
            target = labels[:, 1:]
            mask = target != -100
            logits = answer_logits(model, batch, mask)
            # Normalised over the whole step's answer tokens (``num_items_in_batch``, summed
            # over its micro-batches): with gradient accumulation the trainer then adds the
            # micro-batches' losses as they are, and the step's update is the one one
            # batch would give. Without it (evaluation), over this batch's own tokens.
            tokens = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            loss = F.cross_entropy(logits, target[mask], reduction="sum") / tokens
            if self._teacher is not None and self._alpha < 1.0:
                with torch.no_grad():
                    t_logits = answer_logits(self._teacher, batch, mask)
                t = self._t
                student_lp = F.log_softmax(logits / t, dim=-1)
                teacher_lp = F.log_softmax(t_logits / t, dim=-1)
                kd = F.kl_div(student_lp, teacher_lp, reduction="sum", log_target=True) * t * t / tokens
                loss = self._alpha * loss + (1 - self._alpha) * kd
            return (loss, {"logits": logits}) if return_outputs else loss

    return AnswerHeadTrainer
