"""The training process's environment: OpenMP's policy scoped to it, never to the parent."""

import os

from retrain._train_job import job_environment
from retrain.config import DistillConfig


def test_the_child_gets_the_passive_policy_and_its_thread_count_the_parent_keeps_its_own():
    before = dict(os.environ)
    env = job_environment(DistillConfig(num_threads=2), {"PATH": "/bin", "OMP_WAIT_POLICY": "ACTIVE"})
    assert env == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
    assert dict(os.environ) == before
