"""Model registry and rollout (hot-swap, canary, rollback)."""

from deploy._canary import (
    CanaryConfig,
    CanaryController,
    LiveMetrics,
    RouteSplit,
    VersionStats,
    failing_routes,
    focus_routes,
    judge_canary,
    judge_focus,
    parse_live_metrics,
    parse_version_stats,
    wilson_interval,
)
from deploy._control import (
    ControlEntry,
    ControlStore,
    ControlStoreUnavailable,
    FileControlStore,
    PostgresControlStore,
    open_control_store,
)
from deploy._controller import Rollout, RolloutController
from deploy._evidence import EvidenceBoard, EvidencePublisher, ReplicaEvidence, combine_live, replica_id
from deploy._follower import RegistryFollower
from deploy._lease import LEASE_FILE, RefreshLease
from deploy._registry import ModelRegistry, RegisteredModel, open_registry
from deploy._rollout import RolloutState
from deploy.errors import (
    ModelNotFound,
    RefreshInProgress,
    RegistryError,
    RegistryMismatch,
    RollbackFailed,
)

__all__ = [
    "ControlEntry",
    "ControlStore",
    "ControlStoreUnavailable",
    "FileControlStore",
    "PostgresControlStore",
    "open_control_store",
    "open_registry",
    "LEASE_FILE",
    "CanaryConfig",
    "RefreshInProgress",
    "RefreshLease",
    "CanaryController",
    "EvidenceBoard",
    "EvidencePublisher",
    "ReplicaEvidence",
    "combine_live",
    "replica_id",
    "RouteSplit",
    "ModelNotFound",
    "ModelRegistry",
    "RegisteredModel",
    "RegistryError",
    "RegistryFollower",
    "RegistryMismatch",
    "RollbackFailed",
    "Rollout",
    "RolloutController",
    "RolloutState",
    "LiveMetrics",
    "VersionStats",
    "failing_routes",
    "focus_routes",
    "judge_canary",
    "judge_focus",
    "parse_live_metrics",
    "parse_version_stats",
    "wilson_interval",
]
