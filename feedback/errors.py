"""Feedback errors (see ``common.errors``).

DistilleryError
└── FeedbackError
    ├── SpoolWriteError ...... the disk spool cannot take an event: loud, never silent
    └── StoreUnavailable ..... the feedback store refused a write; the consumer retries
"""

from __future__ import annotations

from common.errors import DistilleryError

__all__ = ["FeedbackError", "SpoolWriteError", "StoreUnavailable"]


class FeedbackError(DistilleryError):
    pass


class SpoolWriteError(FeedbackError):
    pass


class StoreUnavailable(FeedbackError):
    pass
