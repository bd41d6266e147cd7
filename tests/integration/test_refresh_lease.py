"""One refresh at a time per registry, through the real processes: while a refresh holds
the registry's lease, ``distillery retrain`` is refused and a loop tick is skipped, each
saying who holds it; once the holder is gone (released, or crashed and expired), the
next one runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from deploy import ModelRegistry, RefreshLease
from feedback import SQLiteStore
from retrain import EVENTS_FILE, LoopConfig, RefreshLoop, ensure_registry
from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(demo_models, tmp_path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "registry")
    ensure_registry(reg, demo_models / "student")
    return reg


def test_a_second_refresh_is_refused_while_one_runs_and_says_who_holds_it(registry, demo_models, tmp_path):
    running = RefreshLease(registry.control, holder="the stack's refresh loop")
    running.acquire()
    try:
        env = {
            **os.environ,
            "DISTILLERY_VAR_DIR": str(tmp_path / "var"),
            "DISTILLERY_MODELS_DIR": str(demo_models),
            "DISTILLERY_REGISTRY_DIR": str(registry.root),
        }
        cli = subprocess.run(
            [sys.executable, "-m", "distillery.cli", "retrain", "--no-canary"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert cli.returncode == 2, cli.stdout + cli.stderr
        assert "another refresh holds the registry's lease: the stack's refresh loop" in cli.stderr
        assert "Traceback" not in cli.stderr

        loop = RefreshLoop(
            SQLiteStore(tmp_path / "feedback.db"),
            registry,
            LoopConfig(nightly_at=None, canary=False),
            workdir=tmp_path / "candidates",
            fetch_metrics=None,
        )
        registry.request_refresh(reason="test", actor="test")  # manual: no drift or feedback needed
        event = loop.tick()
        assert (event.trigger, event.result) == ("manual", "skipped")
        assert "the stack's refresh loop" in event.detail
        logged = [json.loads(line) for line in (registry.root / EVENTS_FILE).read_text().splitlines()]
        assert logged[-1]["result"] == "skipped" and logged[-1]["detail"] == event.detail
    finally:
        running.release()
    # Free again: the next refresh takes the lease (it then stops on the empty store).
    registry.request_refresh(reason="test", actor="test")
    event = loop.tick()
    assert event.result == "skipped" and "lease" not in event.detail  # not enough feedback, not busy
