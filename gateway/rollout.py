"""The student's hot knobs: which model directory serves, and which canary takes a share.

This is the student deployment's Serve ``user_config`` (JSON-serialisable by design):
changing it reconfigures live replicas in place, which is how hot-swap, canary and
rollback happen without a redeploy.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

__all__ = ["StudentRollout"]


class StudentRollout(BaseModel):
    model_dir: str | None = None
    canary_dir: str | None = None
    canary_share: float = Field(default=0.0, ge=0.0, le=1.0)
    threshold_override: float | None = Field(default=None, ge=0.0, le=1.0)
    """Pins every version's escalation threshold (admin API / ``models threshold``)."""

    @model_validator(mode="after")
    def _share_needs_canary(self) -> StudentRollout:
        if self.canary_share > 0 and self.canary_dir is None:
            raise ValueError("canary_share > 0 needs a canary_dir")
        return self
