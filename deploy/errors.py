"""Registry and rollout errors (see ``common.errors``).

DistilleryError
└── RegistryError
    ├── ModelNotFound ..... no such version in the registry
    ├── RollbackFailed .... nothing to roll back to
    └── RefreshInProgress . another refresh holds the registry's lease
"""

from __future__ import annotations

from common.errors import DistilleryError

__all__ = ["ModelNotFound", "RefreshInProgress", "RegistryError", "RollbackFailed"]


class RegistryError(DistilleryError):
    pass


class ModelNotFound(RegistryError):
    pass


class RollbackFailed(RegistryError):
    pass


class RefreshInProgress(RegistryError):
    """Another refresh holds the registry's lease (one refresh at a time per registry)."""
