"""Router settings: the cascade policy and how each tier's backend is built."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

from router._prior import PriorConfig
from router._scoring import SCORER_NAMES

__all__ = ["BackendConfig", "CascadeConfig", "PriorConfig", "VLLMEngineConfig"]


class CascadeConfig(BaseModel):
    """How the cascade decides and what it does when the teacher fails.

    Parameters:
        scorer (`str`, defaults to ``mean_logprob``): confidence scorer; one of
            ``mean_logprob``, ``min_logprob``, ``quantile_10``, ``quantile_25``.
        threshold (`float | None`, defaults to None): escalate below this confidence.
            ``None`` reads the calibrated value from the student's ``calibration.json``.
        fallback_threshold (`float`, defaults to 0.95): used when neither is set.
        sampled_confidence (`"top_token" | "sampled_token"`, defaults to ``top_token``):
            what a sampled request (temperature > 0) is scored on: the probability of the
            model's most likely token at each step (the default: the same numbers as
            greedy scoring, so one calibrated threshold fits both) or of the token drawn
            (sampling noise then decides the tier). See ``router._scoring``.
        student_timeout_s (`float`, defaults to 10): deadline of the student call. Past it
            the request escalates to the teacher (``reason="student_error"``), or answers
            503 ``student_unavailable`` when the student tier was asked for by name. It
            bounds the wait while Serve replaces the only student replica (a vLLM engine
            start on CPU took >45 s end to end in the chaos test); set it well above the
            student's p99 under load (~1 s on the demo), or every slow answer costs a
            teacher call.
        teacher_timeout_s (`float`, defaults to 20): deadline of the whole teacher phase of
            one request, retries and backoff included.
        teacher_failure_policy (`"error" | "serve_student"`, defaults to ``"error"``):
            when the teacher fails (or its breaker is open), ``error`` answers 503;
            ``serve_student`` returns the student's answer marked ``low_confidence``.
        teacher_retries (`int`, defaults to 2): extra attempts after a transient failure
            (connection refused/reset, HTTP 429/502/503/504, a replica that died under the
            call); never after a timeout or another 4xx, never past the deadline.
        teacher_backoff_s (`float`, defaults to 0.1), teacher_backoff_max_s (`float`,
            defaults to 2.0): the n-th retry waits uniform(0, min(max, backoff * 2**n)).
        breaker_failure_threshold (`int`, defaults to 5): consecutive failed teacher calls
            that open the circuit breaker (calls then fail fast, without a teacher call).
        breaker_cooldown_s (`float`, defaults to 10): how long it stays open before one
            probe call is let through (success closes it, failure re-opens it).
        student_breaker_failure_threshold (`int`, defaults to 3),
        student_breaker_cooldown_s (`float`, defaults to 5): the same for the student
            tier: after that many consecutive student failures (a timeout, a replica lost
            with its node), requests go straight to the teacher for the cooldown, then one
            probe asks the student again. Without it, while a student node is gone every
            request would wait ``student_timeout_s`` before escalating.
        prior (`PriorConfig`): the route prior, learned from the feedback store, that
            decides a route's requests before the student's first token where the store
            is sure (``router._prior``).
    """

    scorer: str = "mean_logprob"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    fallback_threshold: float = Field(default=0.95, ge=0.0, le=1.0)
    sampled_confidence: Literal["top_token", "sampled_token"] = "top_token"
    student_timeout_s: float = Field(default=10.0, gt=0.0)
    teacher_timeout_s: float = Field(default=20.0, gt=0.0)
    teacher_failure_policy: Literal["error", "serve_student"] = "error"
    teacher_retries: int = Field(default=2, ge=0, le=10)
    teacher_backoff_s: float = Field(default=0.1, ge=0.0)
    teacher_backoff_max_s: float = Field(default=2.0, ge=0.0)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=10.0, gt=0.0)
    student_breaker_failure_threshold: int = Field(default=3, ge=1)
    student_breaker_cooldown_s: float = Field(default=5.0, gt=0.0)
    prior: PriorConfig = PriorConfig()

    @model_validator(mode="after")
    def _known_scorer(self) -> CascadeConfig:
        if self.scorer not in SCORER_NAMES:
            raise ValueError(f"scorer must be one of {', '.join(SCORER_NAMES)}")
        return self


class VLLMEngineConfig(BaseModel):
    """vLLM engine options (``kind: vllm``, or ``auto`` when vLLM is chosen).

    Parameters:
        dtype (`str`, defaults to ``float32``): weights/activations; ``float32`` keeps CPU
            answers identical to the transformers backend; ``bfloat16`` on a GPU.
        max_model_len (`int | None`): context length; ``None`` takes the model's.
        kv_cache_gib (`float | None`, defaults to 1): KV cache size (CPU RAM or GPU memory);
            ``None`` lets vLLM size it (``gpu_memory_utilization`` on a GPU).
        enforce_eager (`bool`, defaults to True): skip graph compilation (engine start
            ~7-25 s on CPU instead of ~30-75 s).
        tensor_parallel_size (`int`, defaults to 1): GPUs one engine spans (GPU build only).
        gpu_memory_utilization (`float`, defaults to 0.9): GPU share vLLM may use.
        max_num_seqs (`int`, defaults to 128): requests one engine step may batch.
        seed (`int`, defaults to 0): sampling seed of the engine.
        cache_dir (`Path`, defaults to ``var/vllm``): vLLM/inductor caches and temp files.
    """

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    max_model_len: int | None = Field(default=None, ge=1)
    kv_cache_gib: float | None = Field(default=1.0, gt=0.0)
    enforce_eager: bool = True
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_num_seqs: int = Field(default=128, ge=1)
    seed: int = 0
    cache_dir: Path = Path("var/vllm")


class BackendConfig(BaseModel):
    """One tier's engine.

    Parameters:
        kind (`"transformers" | "vllm" | "auto" | "openai"`): a local HF directory served
            by transformers or by vLLM; ``auto`` picks vLLM where it is importable and
            supports the model's architecture, else transformers (the choice and the reason
            are logged and exported as ``distillery_backend_info``); or an OpenAI-compatible URL.
        model_dir (`Path | None`): the HF directory (``transformers``, ``vllm``, ``auto``);
            defaults to ``<models_dir>/<tier>``.
        vllm (`VLLMEngineConfig`): engine options when vLLM serves.
        base_url, model, api_key: the remote server (``openai``).
        timeout_s (`float`): HTTP timeout of the remote client.
        max_batch_size (`int`), batch_wait_timeout_s (`float`): Serve request batching.
        num_threads (`int | None`): torch intra-op threads of the replica.
        num_replicas (`int`): Serve replicas of this tier.
    """

    kind: Literal["transformers", "vllm", "auto", "openai"] = "transformers"
    model_dir: Path | None = None
    vllm: VLLMEngineConfig = VLLMEngineConfig()
    base_url: str | None = None
    model: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=30.0, gt=0.0)
    max_batch_size: int = Field(default=16, ge=1, le=512)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0.0, le=1.0)
    num_threads: int | None = Field(default=None, ge=1)
    num_replicas: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _remote_needs_url(self) -> BackendConfig:
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("an 'openai' backend needs base_url and model")
        return self
