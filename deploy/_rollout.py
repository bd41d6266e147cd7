"""What the student's replicas serve: which model directory, which canary takes a share,
and the operator's threshold pin.

The registry's pointers resolve to this (``ModelRegistry.rollout_state``); the registry
follower hands it to the serving replicas, and it is also the student deployment's Serve
``user_config`` (JSON-serialisable by design) in a declarative ``serve deploy``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator

__all__ = ["RolloutState"]


class RolloutState(BaseModel):
    model_dir: str | None = None
    """The current version's directory; None while nothing is registered."""
    canary_dir: str | None = None
    canary_share: float = Field(default=0.0, ge=0.0, le=1.0)
    threshold_override: float | None = Field(default=None, ge=0.0, le=1.0)
    """Pins every version's escalation threshold (admin API / ``models threshold``)."""

    @model_validator(mode="after")
    def _share_needs_canary(self) -> RolloutState:
        if self.canary_share > 0 and self.canary_dir is None:
            raise ValueError("canary_share > 0 needs a canary_dir")
        return self

    @property
    def model_path(self) -> Path | None:
        return Path(self.model_dir) if self.model_dir is not None else None

    @property
    def canary_path(self) -> Path | None:
        return Path(self.canary_dir) if self.canary_dir is not None else None
