"""Root of Distillery's error tree.

    DistilleryError
    ├── router.errors.RoutingError
    │   ├── InvalidRequest (PromptTooLong, EmptyPrompt)
    │   ├── StudentUnavailable
    │   ├── ReplicaUnavailable (a replica died under a call; transient)
    │   └── TeacherUnavailable (TeacherTimeout, TeacherConnectionError, TeacherHTTPError,
    │                           TeacherCircuitOpen)
    ├── ConfigError (a setting this machine cannot honour; said before anything starts)
    └── (feedback, retrain, deploy add their own branches)

Only ``gateway`` maps these to HTTP status codes and OpenAI-style error bodies.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DistilleryError"]


class DistilleryError(Exception):
    """Base class of every error Distillery raises on purpose."""


class ConfigError(DistilleryError):
    """A setting that cannot take effect here (a missing optional package, say)."""
