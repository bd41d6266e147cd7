"""Registry and rollout errors (see ``common.errors``).

DistilleryError
└── RegistryError
    ├── ModelNotFound ..... no such version in the registry
    ├── RollbackFailed .... nothing to roll back to
    ├── RefreshInProgress . another refresh holds the registry's lease
    ├── RegistryMismatch .. the registry descends from another student than the configured one
    └── ControlStoreUnavailable  the control store (its database) cannot be reached
"""

from __future__ import annotations

from common.errors import DistilleryError

__all__ = [
    "ControlStoreUnavailable",
    "ModelNotFound",
    "RefreshInProgress",
    "RegistryError",
    "RegistryMismatch",
    "RollbackFailed",
]


class RegistryError(DistilleryError):
    pass


class ModelNotFound(RegistryError):
    pass


class RollbackFailed(RegistryError):
    pass


class RefreshInProgress(RegistryError):
    """Another refresh holds the registry's lease (one refresh at a time per registry)."""


class RegistryMismatch(RegistryError):
    """The registry serves a line of versions that does not start from the configured
    student: it belongs to another preset or configuration (or to a student since rebuilt).
    Serving it would answer with the wrong model and retrain it on the wrong traffic."""


class ControlStoreUnavailable(RegistryError):
    """The control database cannot be reached (or refused the statement): serving goes on
    with the rollout it applied last; rollouts and refreshes wait for it."""
