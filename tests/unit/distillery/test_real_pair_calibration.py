"""A built student's threshold is kept only while the configured agreement metric is the
one that judged its calibration: changing the metric recalibrates, never rebuilds."""

import os
from pathlib import Path

import pytest

import distillery._real_pair as real_pair
from common.model_dir import CalibrationRecord, ModelManifest, ModelSource
from distillery.settings import load_settings
from retrain.config import DistillConfig


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("DISTILLERY_"):
            monkeypatch.delenv(key)


NUMBERS = {"metric": "token_f1", "threshold": 0.9, "numbers_decide": True}


def built_pair(models: Path, metric_name: str):
    settings = load_settings(preset="smollm2", models_dir=str(models), agreement=NUMBERS)
    ModelManifest(version="teacher-t1", role="teacher").save(_mkdir(settings.tier_dir("teacher")))
    student = _mkdir(settings.tier_dir("student"))
    key = real_pair._build_key(settings, settings.real.student_layers, settings.real.seed_per_route, None)
    manifest = ModelManifest(version="student-s1", role="student", source=ModelSource(kind="bootstrapped"))
    manifest.build_key = key  # type: ignore[attr-defined]
    manifest.save(student)
    CalibrationRecord(scorer="mean_logprob", threshold=0.9, agreement_metric=metric_name).save(student)
    return settings


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_metric_change_recalibrates_the_built_student_and_an_unchanged_one_does_not(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(real_pair, "_calibrate", lambda settings, report, announce: calls.append("calibrate"))
    monkeypatch.setattr(real_pair, "derive_student", lambda *a, **k: pytest.fail("rebuilt the student"))
    said: list[str] = []

    same = built_pair(tmp_path / "a", "token_f1>=0.9|numbers")
    report = real_pair.build_student(same, announce=said.append)
    assert calls == [] and not report.built and report.student_version == "student-s1"

    changed = built_pair(tmp_path / "b", "token_f1>=0.9")
    report = real_pair.build_student(changed, announce=said.append)
    assert calls == ["calibrate"] and not report.built
    assert any("token_f1>=0.9, configured token_f1>=0.9|numbers" in line for line in said)

    real_pair.build_student(changed, calibrate=False, announce=said.append)
    assert calls == ["calibrate"]  # asked not to calibrate: it does not


def test_the_build_key_follows_the_recipe_not_fields_left_at_their_defaults(tmp_path):
    """A release that adds a training field with a default keeps the students built
    before it (retrain.replay_served rebuilt one for ~25 min before this rule); a value set
    away from its default, bootstrap or refresh, is a new student."""
    base = load_settings(preset="smollm2", models_dir=str(tmp_path))
    ModelManifest(version="teacher-t1", role="teacher").save(_mkdir(base.tier_dir("teacher")))

    def key(**real: object) -> str:
        settings = load_settings(preset="smollm2", models_dir=str(tmp_path), real=real) if real else base
        return real_pair._build_key(settings, 8, 320, None)

    bootstrap = base.real.bootstrap.model_dump(exclude_unset=True)
    assert real_pair._recipe(DistillConfig(steps=240, num_threads=1)) == {"steps": 240}, "no default in it"
    assert key() == key(bootstrap={**bootstrap, "replay_served": 0.0, "num_threads": 1})
    assert key() != key(bootstrap={**bootstrap, "learning_rate": 1e-4})
    assert key() != key(refresh={"steps": 151, "batch_size": 16, "learning_rate": 3e-4, "warmup_steps": 0})
