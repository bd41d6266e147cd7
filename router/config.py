"""Router settings: the cascade policy and how each tier's backend is built."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

from router._scoring import SCORER_NAMES

__all__ = ["BackendConfig", "CascadeConfig"]


class CascadeConfig(BaseModel):
    """How the cascade decides and what it does when the teacher fails.

    Parameters:
        scorer (`str`, defaults to ``mean_logprob``): confidence scorer; one of
            ``mean_logprob``, ``min_logprob``, ``quantile_10``, ``quantile_25``.
        threshold (`float | None`, defaults to None): escalate below this confidence.
            ``None`` reads the calibrated value from the student's ``calibration.json``.
        fallback_threshold (`float`, defaults to 0.95): used when neither is set.
        teacher_timeout_s (`float`, defaults to 20): bound on one teacher call.
        teacher_failure_policy (`"error" | "serve_student"`, defaults to ``"error"``):
            ``error`` answers 503; ``serve_student`` returns the student's answer marked
            ``low_confidence``.
    """

    scorer: str = "mean_logprob"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    fallback_threshold: float = Field(default=0.95, ge=0.0, le=1.0)
    teacher_timeout_s: float = Field(default=20.0, gt=0.0)
    teacher_failure_policy: Literal["error", "serve_student"] = "error"

    @model_validator(mode="after")
    def _known_scorer(self) -> CascadeConfig:
        if self.scorer not in SCORER_NAMES:
            raise ValueError(f"scorer must be one of {', '.join(SCORER_NAMES)}")
        return self


class BackendConfig(BaseModel):
    """One tier's engine.

    Parameters:
        kind (`"transformers" | "openai"`): a local HF directory, or an OpenAI-compatible URL.
        model_dir (`Path | None`): the HF directory (``transformers``); defaults to
            ``<models_dir>/<tier>``.
        base_url, model, api_key: the remote server (``openai``).
        timeout_s (`float`): HTTP timeout of the remote client.
        max_batch_size (`int`), batch_wait_timeout_s (`float`): Serve request batching.
        num_threads (`int | None`): torch intra-op threads of the replica.
        num_replicas (`int`): Serve replicas of this tier.
    """

    kind: Literal["transformers", "openai"] = "transformers"
    model_dir: Path | None = None
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
