"""A process outside any Ray cluster with a trainer role gets a clear error, not a refresh
that waits hours for a node of the role in a Ray of its own. In a child process: the test
session itself may be a Ray driver already (a session-scoped stack)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

CHILD = """
import ray
from common.errors import ConfigError
from distillery._trainer import TrainerRefresher
from distillery.settings import load_settings
from retrain import DistillConfig

refresher = TrainerRefresher(load_settings(var_dir={var!r}, node_roles={{"trainer": "gpu-trainer"}}))
try:
    refresher(DistillConfig())
except ConfigError as exc:
    print("ConfigError:", exc)
print("ray initialized:", ray.is_initialized())
"""


def test_a_process_outside_any_ray_cluster_is_told_what_is_missing(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(var=str(tmp_path))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "ConfigError: node_roles.trainer is 'gpu-trainer'" in child.stdout
    assert "set RAY_ADDRESS" in child.stdout
    assert "ray initialized: False" in child.stdout  # no Ray of its own was started
