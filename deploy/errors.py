"""Registry and rollout errors (see ``common.errors``).

DistilleryError
└── RegistryError
    ├── ModelNotFound ..... no such version in the registry
    └── RollbackFailed .... nothing to roll back to
"""

from __future__ import annotations

from common.errors import DistilleryError

__all__ = ["ModelNotFound", "RegistryError", "RollbackFailed"]


class RegistryError(DistilleryError):
    pass


class ModelNotFound(RegistryError):
    pass


class RollbackFailed(RegistryError):
    pass
