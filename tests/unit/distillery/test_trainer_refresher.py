"""The refresher that runs a refresh on a ``trainer`` node: chosen by the settings, and a
clear error (not a refresh that waits hours for a node) where no cluster is joined."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from distillery._trainer import TrainerRefresher, trainer_refresher
from distillery.settings import load_settings
from retrain import DistillConfig


def test_the_refresh_runs_in_the_loops_process_unless_a_trainer_role_is_named(tmp_path) -> None:
    assert trainer_refresher(load_settings(var_dir=str(tmp_path))) is None
    named = load_settings(var_dir=str(tmp_path), node_roles={"trainer": "gpu-trainer"})
    assert isinstance(trainer_refresher(named), TrainerRefresher)


def test_a_process_outside_any_ray_cluster_is_told_what_is_missing(tmp_path, monkeypatch) -> None:
    import ray

    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    refresher = TrainerRefresher(load_settings(var_dir=str(tmp_path), node_roles={"trainer": "gpu-trainer"}))
    with pytest.raises(ConfigError, match="set RAY_ADDRESS"):
        refresher(DistillConfig())
    assert not ray.is_initialized()  # no Ray of its own was started
