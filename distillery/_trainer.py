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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distillery.settings import DistillerySettings
from retrain import DistillConfig, Pair, Refresher, RefreshOutcome

__all__ = ["trainer_refresher"]


def _refresh_on_trainer(
    settings: DistillerySettings, recipe: DistillConfig, suite: Sequence[Pair] | None
) -> tuple[RefreshOutcome, str]:
    import ray

    from distillery._stack import serving_factory
    from feedback import open_store
    from retrain import run_refresh
    from router import AgreementMetric

    outcome = run_refresh(
        open_store(settings.store_dsn),
        settings.open_registry(),
        workdir=settings.var_dir / "candidates",
        suite=suite,
        distill_config=recipe,
        gate_config=settings.gate,
        scorer=settings.cascade.scorer,
        agreement=AgreementMetric(settings.agreement),
        backend_factory=serving_factory(settings),
    )
    return outcome, str(ray.get_runtime_context().get_node_id())


class TrainerRefresher:
    """A ``retrain.Refresher`` that runs each refresh on a ``trainer`` node and waits for it.
    ``nodes`` lists where each refresh ran (the node id), newest last."""

    def __init__(self, settings: DistillerySettings, suite: Sequence[Pair] | None = None) -> None:
        role = settings.node_roles.trainer
        if role is None:
            raise ValueError("node_roles.trainer names no role")
        self._settings = settings
        self._suite = list(suite) if suite is not None else None
        self._resources = settings.node_roles.resources("trainer")
        self.nodes: list[str] = []

    def __call__(self, recipe: DistillConfig) -> RefreshOutcome:
        import ray

        task: Any = ray.remote(_refresh_on_trainer).options(
            num_cpus=0, resources=self._resources, max_retries=0, name="distillery-refresh"
        )
        outcome, node = ray.get(task.remote(self._settings, recipe, self._suite))
        self.nodes.append(node)
        assert isinstance(outcome, RefreshOutcome)
        return outcome


def trainer_refresher(settings: DistillerySettings, suite: Sequence[Pair] | None = None) -> Refresher | None:
    """The refresher these settings ask for: None (in the loop's process) unless
    ``node_roles.trainer`` names a role."""
    return TrainerRefresher(settings, suite) if settings.node_roles.trainer else None
