import json

import pytest

from deploy import ModelNotFound, ModelRegistry, RegistryError, RollbackFailed


def _model_dir(tmp_path, name):
    d = tmp_path / "src" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "distillery_model.json").write_text(json.dumps({"version": "old"}))
    return d


def test_register_promote_rollback_with_audit(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(_model_dir(tmp_path, "a"), "v1", {"parent": None, "dataset_size": 0})
    reg.register(_model_dir(tmp_path, "b"), "v2", {"parent": "v1", "dataset_size": 300})
    assert [m.version for m in reg.versions()] == ["v1", "v2"]
    assert reg.get("v2").manifest["parent"] == "v1"
    assert json.loads((reg.get("v2").path / "distillery_model.json").read_text())["version"] == "v2"
    assert reg.current() is None

    reg.promote("v1")
    reg.promote("v2", reason="gate passed")
    assert reg.pointers() == {"current": "v2", "previous": "v1"}
    back = reg.rollback(reason="canary regressed")
    assert back.version == "v1"
    assert reg.pointers() == {"current": "v1", "previous": "v2"}
    actions = [(e["action"], e["version"]) for e in reg.audit()]
    assert actions == [
        ("register", "v1"),
        ("register", "v2"),
        ("promote", "v1"),
        ("promote", "v2"),
        ("rollback", "v1"),
    ]
    assert reg.audit()[-1]["reason"] == "canary regressed"


def test_errors(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(ModelNotFound):
        reg.promote("nope")
    with pytest.raises(RollbackFailed):
        reg.rollback()
    reg.register(_model_dir(tmp_path, "a"), "v1", {})
    with pytest.raises(RegistryError):
        reg.register(_model_dir(tmp_path, "b"), "v1", {})


def test_a_half_written_version_is_invisible(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    staging = tmp_path / "reg" / "versions" / ".staging-v9-1"
    staging.mkdir(parents=True)
    (staging / "config.json").write_text("{}")
    assert reg.versions() == []
    with pytest.raises(ModelNotFound):
        reg.get("v9")


def test_threshold_override_survives_promote_and_rollback_and_clears(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(_model_dir(tmp_path, "a"), "v1", {"parent": None})
    reg.register(_model_dir(tmp_path, "b"), "v2", {"parent": "v1"})
    reg.promote("v1")
    reg.set_threshold_override(0.42, actor="ops")
    reg.promote("v2")
    assert reg.threshold_override() == 0.42
    reg.rollback()
    assert reg.rollout_state().threshold_override == 0.42
    reg.set_threshold_override(None, actor="ops")
    assert reg.threshold_override() is None
    with pytest.raises(RegistryError):
        reg.set_threshold_override(1.5)
    assert [a["actor"] for a in reg.audit() if a["action"] == "threshold"] == ["ops", "ops"]


def test_refresh_request_is_taken_once(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.take_refresh_request() is None
    reg.request_refresh(reason="new data", actor="ops")
    assert reg.pending_refresh() is not None
    taken = reg.take_refresh_request()
    assert taken is not None and taken["actor"] == "ops" and taken["reason"] == "new data"
    assert reg.take_refresh_request() is None
