"""The refresher that runs a refresh on a ``trainer`` node is chosen by the settings (its
Ray side: tests/integration/test_trainer_refresher.py and the three-node chaos module)."""

from __future__ import annotations

from distillery._trainer import TrainerRefresher, trainer_refresher
from distillery.settings import load_settings


def test_the_refresh_runs_in_the_loops_process_unless_a_trainer_role_is_named(tmp_path) -> None:
    assert trainer_refresher(load_settings(var_dir=str(tmp_path))) is None
    named = load_settings(var_dir=str(tmp_path), node_roles={"trainer": "gpu-trainer"})
    assert isinstance(trainer_refresher(named), TrainerRefresher)
