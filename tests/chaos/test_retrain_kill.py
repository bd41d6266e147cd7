"""A retrain SIGKILLed mid-training leaves the registry untouched, and a rerun succeeds.

``distillery retrain`` runs as a real subprocess (TRL on the demo student) against a real
SQLite feedback store seeded with teacher-labelled escalations (the demo domain's exact
answers: what the teacher gives on these skills). It is killed with SIGKILL once training
has logged step 400 of 600 (its scratch directory in place); the registry -- pointers,
versions, manifests, audit log, loop state -- must be byte-for-byte what it was.
A second run then trains, gates and registers normally.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo import sample_examples
from deploy import LEASE_FILE, ModelRegistry
from feedback import EscalationEvent, SQLiteStore
from retrain import ensure_registry
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILL_AT_STEP = 400
STEPS = 600


def _tree(root: Path) -> dict[str, str]:
    """The registry's content: every file but the refresh lease (a lock: a killed holder
    leaves it behind by design, and the next refresh takes it over)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LEASE_FILE
    }


def _env(var: Path, demo_models: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DISTILLERY_VAR_DIR": str(var),
        "DISTILLERY_MODELS_DIR": str(demo_models),
        "DISTILLERY_FEEDBACK__STORE_DSN": str(var / "feedback.db"),
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "distillery.cli", *args]


def test_retrain_killed_mid_training_leaves_the_registry_untouched_and_a_rerun_succeeds(
    demo_models, tmp_path
):
    var = tmp_path / "var"
    var.mkdir()
    examples = sample_examples(["shift", "double"], 400, random.Random(21))
    store = SQLiteStore(var / "feedback.db")
    store.insert(
        [
            EscalationEvent(
                request_id=f"esc-{i}",
                prompt=e.prompt,
                student_answer="x",
                teacher_answer=e.answer,
                skill=e.skill,
            )
            for i, e in enumerate(examples)
        ]
    )
    store.close()
    env = _env(var, demo_models)
    registry = var / "registry"
    ensure_registry(ModelRegistry(registry), demo_models / "student")  # what the first start does
    before = _tree(registry)
    pointers_before = json.loads((registry / "pointers.json").read_text())

    started = time.monotonic()
    proc = subprocess.Popen(
        _cli("retrain", "--steps", str(STEPS), "--min-new", "100", "--no-canary"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen_step = 0
    for raw in proc.stdout:  # JSON log lines (not a TTY)
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("msg") == "progress" and int(line.get("done", 0)) >= KILL_AT_STEP:
            seen_step = int(line["done"])
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    killed_after_s = time.monotonic() - started
    assert seen_step >= KILL_AT_STEP and proc.returncode == -signal.SIGKILL, "not killed mid-training"
    partial = list((var / "candidates").glob("*.partial"))
    assert partial, "the kill should have left the run's scratch directory behind"

    assert _tree(registry) == before  # pointers, versions, manifests, audit log: untouched
    stale = json.loads((registry / LEASE_FILE).read_text())
    assert stale["holder"] == "distillery retrain" and stale["pid"] == proc.pid  # left by the dead trainer

    rerun = subprocess.run(
        _cli("retrain", "--steps", "40", "--min-new", "100", "--no-canary"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode in (0, 1), rerun.stdout[-2000:] + rerun.stderr[-2000:]  # 1: gate refused
    assert "gate: " in rerun.stdout
    versions_before = {p.split("/")[1] for p in before if p.startswith("versions/")}
    versions_after = {p.name for p in (registry / "versions").iterdir() if not p.name.startswith(".")}
    new = versions_after - versions_before
    assert len(new) == 1, new
    pointers = json.loads((registry / "pointers.json").read_text())
    if rerun.returncode == 0:
        assert pointers["current"] == next(iter(new))
    else:  # registered with its gate report, never served
        assert pointers == pointers_before
    print(
        f"\nCHAOS | retrain SIGKILLed at training step {seen_step}/{STEPS} "
        f"({killed_after_s:.0f}s after start) | registry files changed: 0 of {len(before)} | "
        f"rerun: exit {rerun.returncode}, registered {next(iter(new))}"
    )
