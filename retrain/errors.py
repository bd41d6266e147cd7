"""Retraining errors (see ``common.errors``).

DistilleryError
└── RetrainError
    ├── NotEnoughFeedback .... too few new escalations to train on
    └── DriftCheckError ...... the drift report could not be computed
"""

from __future__ import annotations

from common.errors import DistilleryError

__all__ = ["DriftCheckError", "NotEnoughFeedback", "RetrainError"]


class RetrainError(DistilleryError):
    pass


class NotEnoughFeedback(RetrainError):
    pass


class DriftCheckError(RetrainError):
    pass
