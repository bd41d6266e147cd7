"""Evidently drift checks on demo traffic: false alarms on unshifted windows, detection on drift."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from demo import STUDENT_SKILLS, sample_examples
from feedback import EscalationEvent
from retrain import DriftConfig, check_drift, load_reference, traffic_sample

pytestmark = pytest.mark.integration


def _prompts(skills, n, seed):
    return [e.prompt for e in sample_examples(list(skills), n, random.Random(seed))]


@pytest.fixture(scope="module")
def reference(demo_models):
    return [p.prompt for p in load_reference(demo_models / "student")]


@pytest.mark.parametrize("seed", [101, 202])
def test_unshifted_traffic_raises_no_alarm(reference, seed):
    result = check_drift(reference, _prompts(STUDENT_SKILLS, 300, seed), DriftConfig(), seed=seed)
    assert not result.drifted, result.columns


def test_traffic_drifting_onto_new_skills_is_detected_with_reports(reference, tmp_path):
    current = _prompts([*STUDENT_SKILLS, "shift", "double"], 300, 303)
    result = check_drift(
        reference,
        current,
        DriftConfig(),
        escalation_rate=0.5,
        expected_escalation_rate=0.02,
        out_dir=tmp_path,
    )
    assert result.drifted and "columns drifted" in result.reason and "escalation rate" in result.reason
    assert result.columns["leading_word"]["drifted"]
    assert result.report_html and (tmp_path / result.report_html.split("/")[-1]).stat().st_size > 10_000
    summary = json.loads(Path(result.summary_json).read_text())
    assert summary["drifted"] is True and set(summary["columns"]) == {
        "prompt",
        "prompt_length",
        "leading_word",
    }


def test_small_windows_give_no_verdict(reference):
    result = check_drift(reference, _prompts(["shift"], 20, 1), DriftConfig(min_rows=100))
    assert not result.drifted and "not enough rows" in result.reason


def test_traffic_sample_unbiases_escalations():
    rng = random.Random(0)
    events = [EscalationEvent(request_id=f"e{i}", prompt="shift: abc =") for i in range(100)]
    events += [EscalationEvent(request_id=f"s{i}", kind="sample", prompt="upper: abc =") for i in range(20)]
    prompts, confidence, rate = traffic_sample(events, 0.1, rng)
    assert len(confidence) == len(prompts)
    # 20 samples at 10% stand for 200 confident answers: 100 / 300 escalated.
    assert rate == pytest.approx(100 / 300)
    assert 20 <= len(prompts) <= 45


def test_confidence_is_a_drift_column_when_both_sides_have_it(reference):
    rng = random.Random(4)
    current = _prompts(STUDENT_SKILLS, 300, 404)
    confident = [0.999 + rng.random() * 0.001 for _ in reference]
    same = check_drift(
        reference,
        current,
        DriftConfig(),
        reference_confidence=confident,
        current_confidence=[0.999 + rng.random() * 0.001 for _ in current],
    )
    assert "confidence" in same.columns and not same.columns["confidence"]["drifted"]
    shaky = check_drift(
        reference,
        current,
        DriftConfig(),
        reference_confidence=confident,
        current_confidence=[0.5 + rng.random() * 0.3 for _ in current],
    )
    assert shaky.columns["confidence"]["drifted"]


def test_rows_without_a_confidence_still_count_for_the_prompt_columns(reference):
    """Requests the route prior sent past the student carry no confidence: they are drift
    rows all the same (the drifted traffic is what the prior skips first)."""
    rng = random.Random(5)
    drifted = _prompts(("shift", "double"), 200, 505)
    confident = [0.999 + rng.random() * 0.001 for _ in reference]
    some = [None if i % 3 == 0 else 0.6 for i in range(len(drifted))]
    result = check_drift(
        reference, drifted, DriftConfig(), reference_confidence=confident, current_confidence=some
    )
    assert result.rows_current == len(drifted) and result.drifted and "confidence" in result.columns
    mostly_skipped = [None if i % 4 else 0.6 for i in range(len(drifted))]
    result = check_drift(
        reference, drifted, DriftConfig(), reference_confidence=confident, current_confidence=mostly_skipped
    )
    assert result.rows_current == len(drifted) and result.drifted and "confidence" not in result.columns


def _cli(var: Path, models: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISTILLERY_VAR_DIR": str(var), "DISTILLERY_MODELS_DIR": str(models)}
    env.pop("DISTILLERY_REGISTRY_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "distillery.cli", "--preset", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_read_only_commands_leave_no_registry_behind(demo_models, tmp_path):
    var = tmp_path / "var"
    for args in (("drift", "check"), ("models", "list")):
        done = _cli(var, demo_models, *args)
        assert done.returncode == 0, done.stderr[-2000:]
    assert "no versions in" in done.stdout
    assert not (var / "registry").exists()


def test_a_registry_of_another_student_is_refused_with_what_to_do(demo_models, tmp_path):
    from deploy import ModelRegistry
    from retrain import ensure_registry

    var = tmp_path / "var"
    other = tmp_path / "other-student"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "distillery_model.json").write_text(json.dumps({"version": "student-of-another-preset"}))
    ensure_registry(ModelRegistry(var / "registry"), other)
    for args in (("drift", "check"), ("models", "list")):
        done = _cli(var, demo_models, *args)
        assert done.returncode == 2
        assert "student-of-another-preset" in done.stderr and "var_dir" in done.stderr
        assert "Traceback" not in done.stderr
