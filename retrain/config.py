"""Re-distillation settings: the dataset, the TRL run and the evaluation gate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from common.model_dir import ModelManifest, TrainingDefaults
from retrain._labels import VerifierConfig
from router.config import BackendConfig

__all__ = ["PRETRAINED_TRAINING", "DistillConfig", "GateConfig", "QuantizeConfig"]

PRETRAINED_TRAINING = TrainingDefaults(steps=200, batch_size=16, learning_rate=1e-4, warmup_steps=10)
"""Used where neither the config nor the parent's model directory says: values that do
not wreck a pretrained model (a from-scratch toy wants far more, and says so in its
manifest)."""


class DistillConfig(BaseModel):
    """How a candidate student is distilled from the feedback store.

    Parameters that control the data:
        min_new_examples (`int`, defaults to 1800): fewer usable escalations than this
            since the last refresh: no retrain. Measured on the demo (600 steps): ~540
            escalations: refused by the gate (a known skill 100% -> 76-90%); ~1,000-1,100:
            seed-dependent, 4 of 5 runs refused (reverse 84-96%, shift 70-76%); ~2,000: 4 of
            4 passed with every skill >= 98%.
        holdout_fraction (`float`, defaults to 0.1): share of request ids (stable hash)
            never trained on; the gate's held-out teacher answers.
        replay_share (`float`, defaults to 0.5): share of the training set drawn from the
            student's original training data, so old skills are not forgotten.
        replay_served (`float`, defaults to 0.0): up to this share of the replayed rows
            are the serving student's own answers to live prompts (the store's ``sample``
            events of that version, labelled with its answer: ``retrain._replay``); the
            reference fills the rest. A student has memorised its reference (the real
            pair's reproduces all 358 rows word for word), so replaying only it holds
            little of how the student answers prompts it has not seen.
        max_examples (`int`, defaults to 6000): cap on the training set (new + replay).
        verifiers (`list[VerifierConfig]`, defaults to none): checks a teacher answer must
            pass before it teaches (a JSON schema, a regex, a ``module:function``), per
            route; rejections are counted by reason in the candidate's manifest
            (``retrain._labels``).
        second_teacher (`BackendConfig | None`, defaults to None): a second teacher that
            answers the escalated prompts offline when the dataset is built; only the
            labels both teachers agree on (the configured agreement metric) are kept.
    Parameters that control training (TRL ``SFTTrainer`` on prompt/completion pairs: the
    sequence-level distillation of Kim & Rush, loss on the teacher's answer only):
        method (`"sft" | "logit_kd"`, defaults to ``sft``): ``logit_kd`` is on-policy logit
            distillation with TRL's ``DistillationTrainer`` (the generalised-JSD loss of
            GKD; needs the teacher's weights locally, same tokenizer). Measured on the demo:
            200 steps (27 s) took the new skills only to 0-23% where SFT reached 98-100%,
            so SFT stays the default; ``kd_beta`` sets the JSD interpolation.
            ``sft_kd`` blends, on the same prompt/answer pairs, ``kd_alpha`` x cross-entropy
            on the labels (ground truth for replayed rows, the teacher's answer for
            escalations) with (1 - ``kd_alpha``) x KL(teacher || student) on the teacher's
            token distributions (Hinton et al.); needs the teacher's weights locally.
        steps (`int | None`), batch_size (`int | None`), learning_rate (`float | None`),
        warmup_steps (`int | None`): None takes the parent model directory's own
        ``training`` defaults (``distillery_model.json``), else ``PRETRAINED_TRAINING``
        (200 steps, batch 16, LR 1e-4, 10 warm-up steps). The demo student's manifest
        says 600 / 64 / 1e-3 / 20 (measured: 0% -> 100% on two new skills in ~40 s with
        50% replay, old skills >= 99.5%); the SmolLM2-derived student's says what its
        bootstrap measured (docs/benchmarks.md, real loop).
        answer_only_head (`bool`, defaults to True): compute the output head at answer
            positions only (same loss, ~1.7x faster a step on a 49k vocabulary).
        micro_batches (`int`, defaults to 4): each step's rows (drawn at random, as
            before) are sorted by token length and run as this many micro-batches with
            gradient accumulation, the loss normalised over the whole step's answer
            tokens: the same update, less padding (SFT methods; 1 = one padded batch).
            A batch is padded to its longest row, and a prompt with tools is ~425 SmolLM2
            tokens where a support question is ~50-80: nearly every random batch of 16
            held one and paid for 16. Used only where it saves at least 40% of the
            padding on the run's rows (``retrain._train.MICRO_BATCH_SAVING``): on rows of
            like length smaller products only cost time. Measured alone on 2 cores
            (structured refresh mix, batch 16): 4.05 s a step vs 7.25 s as one batch, the
            same loss after 12 steps. Batches grouped by length across the
            epoch instead (transformers' ``LengthGroupedSampler``) were faster still but
            changed what a step holds (one route per batch): the bootstrapped student's
            confidence AUROC fell from 0.985 to 0.691.
        max_completion_tokens (`int`, defaults to 32): on-policy generation length
            (``logit_kd``).
        frozen_layers (`int`, defaults to 0): the token embeddings (and an output head
            tied to them) and the lowest this-many decoder layers are not trained.
            Nothing below the first trained layer needs a backward pass, and the
            optimizer skips the embedding matrix (28M of a SmolLM2 student's ~57M
            parameters): a step costs about (L + 2 x (L - N)) / 3L of a full one. A drift
            refresh teaches a few answer templates on top of what the student knows; the
            lower layers it leaves alone are also the ones the old routes share.
        max_epochs (`float | None`, defaults to None): the step budget is cut to at most
            this many passes over the training set (new + replay rows), never below
            ``min_steps``: ``steps`` is the budget for a large dataset, and a refresh on a
            few hundred fresh escalations needs (and, beside serving, can afford) fewer.
        min_steps (`int`, defaults to 20).
        num_threads (`int`, defaults to 2): torch threads of the training process.
        isolated (`bool`, defaults to True): train in a process of its own
            (``retrain._train_job``), with ``OMP_WAIT_POLICY=omp_wait_policy`` and
            ``niceness``; only there can either be set without reaching the serving
            engines (Ray workers and vLLM inherit the environment they start with).
        niceness (`int`, defaults to 5): added to the training process's nice value, so
            serving wins the cores when both want them (0: equal priority).
        omp_wait_policy (`"PASSIVE" | "ACTIVE"`, defaults to ``PASSIVE``): what OpenMP's
            idle threads do between parallel regions. Measured beside serving load on 2
            cores: 10.0 s a step passive vs 15.3 s with libgomp's spinning default (5.9
            vs 5.6 alone).
        seed (`int`, defaults to 0).
    """

    min_new_examples: int = Field(default=1800, ge=1)
    holdout_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    replay_share: float = Field(default=0.5, ge=0.0, lt=1.0)
    replay_served: float = Field(default=0.0, ge=0.0, le=1.0)
    max_examples: int = Field(default=6000, ge=10)
    verifiers: list[VerifierConfig] = Field(default_factory=list)
    second_teacher: BackendConfig | None = None
    method: Literal["sft", "logit_kd", "sft_kd"] = "sft"
    kd_alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    kd_beta: float = Field(default=0.5, ge=0.0, le=1.0)
    kd_temperature: float = Field(default=1.0, gt=0.0)
    steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0.0)
    warmup_steps: int | None = Field(default=None, ge=0)
    answer_only_head: bool = True
    micro_batches: int = Field(default=4, ge=1)
    max_completion_tokens: int = Field(default=32, ge=1)
    frozen_layers: int = Field(default=0, ge=0)
    max_epochs: float | None = Field(default=None, gt=0.0)
    min_steps: int = Field(default=20, ge=1)
    num_threads: int = Field(default=2, ge=1)
    isolated: bool = True
    niceness: int = Field(default=5, ge=0, le=19)
    omp_wait_policy: Literal["PASSIVE", "ACTIVE"] = "PASSIVE"
    seed: int = 0

    def resolved(self, parent_dir: Path | None = None) -> DistillConfig:
        """Every training field filled: this config, then the parent's manifest, then
        ``PRETRAINED_TRAINING``."""
        manifest = ModelManifest.load(parent_dir) if parent_dir is not None else None
        own = manifest.training if manifest is not None and manifest.training else TrainingDefaults()
        update = {
            name: next(
                v
                for v in (getattr(self, name), getattr(own, name), getattr(PRETRAINED_TRAINING, name))
                if v is not None
            )
            for name in TrainingDefaults.model_fields
        }
        return self.model_copy(update=update)

    def budgeted(self, rows: int) -> DistillConfig:
        """The resolved config with ``steps`` cut to ``max_epochs`` passes over ``rows``."""
        if self.max_epochs is None or self.steps is None or self.batch_size is None:
            return self
        passes = math.ceil(self.max_epochs * rows / self.batch_size)
        return self.model_copy(update={"steps": min(self.steps, max(self.min_steps, passes))})


class GateConfig(BaseModel):
    """When a candidate may replace the serving student.

    Parameters:
        min_holdout_agreement_gain (`float`, defaults to 0.0): the candidate's agreement
            with the teacher on held-out escalations must beat the current student's by
            at least this much (0: not worse).
        max_skill_regression (`float`, defaults to 0.02): on the fixed regression suite,
            on a route the current student already masters (>= ``min_route_accuracy``),
            the share of items the candidate would serve wrong (kept at its recalibrated
            threshold, and disagreeing with the label) may rise by at most this
            (``retrain._gate.route_regression``).
        max_route_escalation_increase (`float`, defaults to 0.05): on such a route, the
            share of suite items the candidate would escalate may rise by at most this
            (the product's bar for old routes: not worse by more than 5 points).
        max_ece (`float`, defaults to 0.1), max_ece_increase (`float`, defaults to 0.02):
            expected calibration error of the candidate's confidence on the regression
            suite: at most ``max_ece``, or not more than ``max_ece_increase`` above the
            current student's. A real model's mean token probability is not a calibrated
            probability of agreeing (the SmolLM2-derived student sits near 0.15), and the
            gate's rule is "not worse", so the current model sets the bar where it is
            already above the absolute one.
        max_invalid_rate (`float`, defaults to 0.02), max_invalid_increase (`float`,
            defaults to 0.01): answers that are empty or cut off by the length limit, by
            the same rule (the real teacher itself rambles past 24 tokens on ~10% of
            capital questions, and a student trained on it inherits some of that); a rise
            past the bar counts only beyond chance (``route_regression_alpha``, on the
            items that became invalid vs valid), as a route's does.
        min_json_validity (`float`, defaults to 0.98): structured requests (a
            ``response_format`` or tools) in the holdout and suite: the share of the
            candidate's answers that keep their contract (parse, fit the schema, call a
            known function with valid arguments, within the length limit) must reach this
            or the current student's share, whichever is lower (not worse than the current
            one; at this level, a point of sampling noise below it is no reason to refuse).
            Their structural agreement with the labels (the same parsed JSON; the same
            functions and parsed arguments) may drop by at most ``max_skill_regression``.
        target_agreement (`float`, defaults to 0.995): the candidate is recalibrated to this
            served agreement before its escalation rate is compared.
        min_kind_calibration (`int`, defaults to 20): a structured output kind (``json``,
            ``tool_call``) with at least this many answers in the holdout and suite gets a
            threshold recalibrated on its answers alone (``calibration.json``'s
            ``by_kind``; constrained decoding moves log-probs); one with fewer, and free
            text, use the overall threshold.
        min_route_calibration (`int | None`, defaults to 50): a route with at least this
            many answers in the holdout and suite gets its own threshold, picked on its
            answers alone at ``target_agreement`` (``calibration.json``'s ``by_route``; the
            cascade judges a request by its route's bar, else its kind's). A refresh moves
            routes' confidences apart; one bar for all escalated an old route's right
            answers. None: one threshold for every route.
        commit_escalation_budget (`float`, defaults to 0.02): with ``stream_mode: live``,
            the student's tokens stream once a prefix of ``k`` tokens decides; the earliest
            ``k`` is chosen whose decision escalates at most this much more than deciding on
            the whole answer does, at the same served agreement (``router.calibrate_commit``).
            A larger budget buys an earlier first token with more escalations (the real
            pair: 12 tokens at 0.02; 4 tokens at ~0.05).
        max_new_tokens (`int | None`): answer budget of the evaluation; None takes the
            model directory's ``max_new_tokens``, else 24.
        batch_size (`int`, defaults to 64): requests per generate call of the evaluation.
        suite_file (`Path | None`): a JSONL regression suite (``prompt`` or ``messages``,
            ``completion``, optional ``skill``/``route``). None: the serving student's
            ``regression_suite.jsonl`` plus, per route, up to ``suite_per_route`` held-out
            teacher answers from the store (stable split, never trained on).
        suite_per_route (`int`, defaults to 50).
        min_route_accuracy (`float`, defaults to 0.9): only routes the current student
            already masters are protected by ``max_skill_regression``.
        route_regression_alpha (`float`, defaults to 0.05): a route's rise in wrong served
            answers or escalations beyond its bar counts only when it is also unlikely to be
            noise: an exact sign test on the suite items that got worse vs better gives
            p < this. A route suite holds ~50 items, where one answer is 2 points. 1.0:
            the rates alone decide.
    """

    min_holdout_agreement_gain: float = 0.0
    max_skill_regression: float = Field(default=0.02, ge=0.0)
    max_route_escalation_increase: float = Field(default=0.05, ge=0.0)
    max_ece: float = Field(default=0.1, ge=0.0)
    max_ece_increase: float = Field(default=0.02, ge=0.0)
    max_invalid_rate: float = Field(default=0.02, ge=0.0)
    max_invalid_increase: float = Field(default=0.01, ge=0.0)
    min_json_validity: float = Field(default=0.98, ge=0.0, le=1.0)
    target_agreement: float = Field(default=0.995, gt=0.0, le=1.0)
    min_kind_calibration: int = Field(default=20, ge=1)
    min_route_calibration: int | None = Field(default=50, ge=1)
    min_parent_agreement: float = Field(default=0.98, ge=0.0, le=1.0)
    """A quantized candidate answers as its parent on at least this share of the suite
    (``distillery models quantize``): quantization must not change what is served."""
    commit_escalation_budget: float = Field(default=0.02, ge=0.0, le=1.0)
    max_new_tokens: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=64, ge=1)
    suite_file: Path | None = None
    suite_per_route: int = Field(default=50, ge=1)
    min_route_accuracy: float = Field(default=0.9, ge=0.0, le=1.0)
    route_regression_alpha: float = Field(default=0.05, gt=0.0, le=1.0)


class QuantizeConfig(BaseModel):
    """``quantize``: how the checkpoint schemes (``w8a8``, ``w4a16``) are written.

    Their quantizer, llmcompressor, runs as a job in its own environment
    (``retrain._quantize_job`` says why); the torch schemes (``int8_dynamic``, ``bf16``)
    need none of this.

    Parameters:
        python (`Path`, defaults to ``.venv-quantize/bin/python``): the quantizer's
            interpreter, relative to the working directory unless absolute; ``make
            setup-quantizer`` builds it. Missing: a ``ConfigError`` that says so, before
            anything is copied.
        calibration_samples (`int`, defaults to 256): prompts the quantizer calibrates on:
            the requests the parent student answered (served samples and escalations from
            the store's training split, never the gate's held-out one), drawn round-robin
            over routes so a busy route does not crowd out the others, each rendered with
            the serving template and followed by the student's own answer. GPTQ's papers
            calibrate on 128 random 2,048-token segments; these prompts are short, so more
            of them.
        min_store_samples (`int`, defaults to 32): with fewer answered prompts in the store,
            the parent's own files (its training reference and regression suite) fill the
            sample, and the version's ``QuantizationRecord`` says so.
        calibration_file (`Path | None`): a JSONL (``prompt`` or ``messages``,
            ``completion``) to calibrate on instead of the store.
        max_seq_length (`int`, defaults to 512): longer samples are truncated.
        smoothing_strength (`float`, defaults to 0.8): SmoothQuant's migration strength
            (``w8a8``).
        group_size (`int`, defaults to 32): ``w4a16``'s weight group (one scale per this
            many input weights; a larger group is taken only where the widths allow and it
            is asked for). Measured on the real student with the same calibration: groups
            of 64 kept 96.8% of its greedy answers and escalated more (refused), groups of
            32 kept 100% for 1% more bytes (76.3 vs 75.4 MB).
        threads (`int | None`, defaults to 1): torch threads of the job, which runs beside
            serving (None: torch's default, every core).
        timeout_s (`float`, defaults to 1800).
    """

    python: Path = Path(".venv-quantize/bin/python")
    calibration_samples: int = Field(default=256, ge=1)
    min_store_samples: int = Field(default=32, ge=0)
    calibration_file: Path | None = None
    max_seq_length: int = Field(default=512, ge=16)
    smoothing_strength: float = Field(default=0.8, gt=0.0, lt=1.0)
    group_size: Literal[32, 64, 128] = 32
    threads: int | None = Field(default=1, ge=1)
    timeout_s: float = Field(default=1800.0, gt=0.0)
