"""Model registry and rollout (hot-swap, canary, rollback)."""

from deploy._registry import ModelRegistry, RegisteredModel
from deploy.errors import ModelNotFound, RegistryError, RollbackFailed

__all__ = ["ModelNotFound", "ModelRegistry", "RegisteredModel", "RegistryError", "RollbackFailed"]
