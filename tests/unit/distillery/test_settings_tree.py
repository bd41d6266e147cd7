"""One settings tree: every section printed by ``distillery config``, each settable by env,
presets below the config file, nothing written back into the environment."""

import json
import os

import pytest
import yaml

from distillery.cli import main
from distillery.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("DISTILLERY_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("env", "value", "path"),
    [
        ("DISTILLERY_RETRAIN__LEARNING_RATE", "0.0002", ("retrain", "learning_rate")),
        ("DISTILLERY_GATE__MAX_NEW_TOKENS", "40", ("gate", "max_new_tokens")),
        ("DISTILLERY_LOOP__CHECK_INTERVAL_S", "42.5", ("loop", "check_interval_s")),
        ("DISTILLERY_CANARY__MIN_REQUESTS", "7", ("canary", "min_requests")),
        ("DISTILLERY_AGREEMENT__METRIC", "chrf", ("agreement", "metric")),
    ],
)
def test_distillery_config_prints_each_section_and_the_env_changes_it(env, value, path, monkeypatch, capsys):
    monkeypatch.setenv(env, value)
    assert main(["config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    section, field = path
    assert str(printed[section][field]) == value


def test_presets_sit_below_the_config_file_and_the_env(tmp_path, monkeypatch):
    real = load_settings(preset="smollm2")
    assert real.workload == "support" and real.agreement.metric == "token_f1"
    assert real.feedback.route_labeler == "demo:support_route_label"
    demo = load_settings()
    assert demo.preset == "demo" and demo.agreement.metric == "exact" and demo.workload == "toy"
    file = tmp_path / "s.yaml"
    file.write_text("agreement: {metric: normalized}\ngate: {batch_size: 8}\n")
    layered = load_settings(file, preset="smollm2")
    assert layered.agreement.metric == "normalized" and layered.gate.batch_size == 8
    assert layered.gate.max_new_tokens == 24  # the preset's, beside the file's key
    monkeypatch.setenv("DISTILLERY_GATE__BATCH_SIZE", "4")
    assert load_settings(file, preset="smollm2").gate.batch_size == 4
    assert not any(k.startswith("DISTILLERY_CONFIG") for k in os.environ)


def test_an_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        load_settings(preset="gpt-17")


def test_config_output_is_the_whole_tree(capsys):
    main(["--preset", "smollm2", "config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {"retrain", "gate", "loop", "canary", "agreement", "real", "cascade", "feedback"} <= set(printed)
    assert json.dumps(printed)


def test_the_real_preset_refuses_at_load_a_refresh_that_would_freeze_every_student_layer():
    with pytest.raises(ValueError, match=r"must be below real\.student_layers"):
        load_settings(preset="smollm2", retrain={"frozen_layers": 2}, real={"student_layers": 2})
    fitted = load_settings(preset="smollm2", retrain={"frozen_layers": 1}, real={"student_layers": 2})
    assert fitted.retrain.frozen_layers == 1
    assert load_settings(preset="demo", retrain={"frozen_layers": 9}).retrain.frozen_layers == 9
