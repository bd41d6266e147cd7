"""A refresh's dataset, training and gate as Ray work on a node of the ``trainer`` role.

With ``node_roles.trainer`` set, the refresh loop (wherever it runs: ``distillery run``'s
process, a CronJob) keeps the drift check, the lease, the canary and the rollout, and
hands the heavy part to a Ray task placed by that role's resource: a GPU node can train
while CPU nodes serve, and the loop's process stays small. The task rebuilds what it needs
from the settings (the feedback store by DSN, the registry and its control store, the
gate's engine factory) on its own node; it pulls the parent's files into that node's
cache (``registry_url``) and registers the candidate there, so the loop gets back only
the outcome. The task is not retried: a trainer node lost mid-way fails this refresh,
and the loop's next tick starts a new one under a new lease.

The loop's process must be a driver of the cluster: ``distillery run`` is one already;
``distillery loop`` on its own (a pod, a CronJob) joins the cluster named by
``RAY_ADDRESS``. A refresh waits at most ``TRAINER_TIMEOUT_S`` for its task (no node of the
role, an autoscaler that never adds one): then it is cancelled and the refresh fails, so
the lease is not held forever.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from common.errors import ConfigError
from distillery.settings import DistillerySettings
from retrain import DistillConfig, Pair, Refresher, RefreshOutcome

__all__ = ["TRAINER_TIMEOUT_S", "TrainerRefresher", "trainer_refresher"]

logger = logging.getLogger(__name__)

TRAINER_TIMEOUT_S = 4 * 3600.0


def _refresh_on_trainer(
    settings: DistillerySettings, recipe: DistillConfig, suite: Sequence[Pair] | None
) -> tuple[RefreshOutcome, str]:
    import ray

    from distillery._stack import refresh_with_settings

    registry = settings.open_registry()
    registry.prune_cache()  # earlier candidates no pointer names any more
    outcome = refresh_with_settings(settings, registry, recipe, suite=suite)
    return outcome, str(ray.get_runtime_context().get_node_id())


class TrainerRefresher:
    """A ``retrain.Refresher`` that runs each refresh on a ``trainer`` node and waits for it.
    ``nodes`` lists where each refresh ran (the node id), newest last."""

    def __init__(
        self,
        settings: DistillerySettings,
        suite: Sequence[Pair] | None = None,
        *,
        timeout_s: float = TRAINER_TIMEOUT_S,
    ) -> None:
        role = settings.node_roles.trainer
        if role is None:
            raise ValueError("node_roles.trainer names no role")
        self._role = role
        self._timeout_s = timeout_s
        self._settings = settings
        self._suite = list(suite) if suite is not None else None
        self._resources = settings.node_roles.resources("trainer")
        self.nodes: list[str] = []

    def __call__(self, recipe: DistillConfig) -> RefreshOutcome:
        import ray

        if not ray.is_initialized():
            if not os.environ.get("RAY_ADDRESS"):
                # A Ray of its own would have no node of the role: the refresh would wait
                # for one until the timeout. Say what is missing instead.
                raise ConfigError(
                    f"node_roles.trainer is {self._role!r}, so a refresh runs as Ray work on a node of "
                    "that role, but this process is not part of a Ray cluster: set RAY_ADDRESS "
                    "(e.g. ray://HEAD:10001) or unset node_roles.trainer"
                )
            ray.init(log_to_driver=False)  # joins the cluster RAY_ADDRESS names
        if not ray.cluster_resources().get(self._role):  # type: ignore[no-untyped-call]
            logger.warning("no node of role %r yet: the refresh waits for one", self._role)
        task: Any = ray.remote(_refresh_on_trainer).options(
            num_cpus=0, resources=self._resources, max_retries=0, name="distillery-refresh"
        )
        ref = task.remote(self._settings, recipe, self._suite)
        try:
            outcome, node = ray.get(ref, timeout=self._timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise TimeoutError(
                f"the refresh on a {self._role!r} node did not finish within {self._timeout_s:g}s"
            ) from None
        self.nodes.append(node)
        assert isinstance(outcome, RefreshOutcome)
        return outcome


def trainer_refresher(settings: DistillerySettings, suite: Sequence[Pair] | None = None) -> Refresher | None:
    """The refresher these settings ask for: None (in the loop's process) unless
    ``node_roles.trainer`` names a role."""
    return TrainerRefresher(settings, suite) if settings.node_roles.trainer else None
