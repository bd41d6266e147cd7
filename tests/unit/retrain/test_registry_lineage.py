"""A registry serves only a line that starts from the configured student (issue 26: the
real preset served the demo's student from a shared ``var/registry``), and a read-only
look never writes it."""

import json
from pathlib import Path

import pytest

from deploy import ModelRegistry, RegistryMismatch
from distillery.settings import load_settings
from retrain import ensure_registry, lineage, serving_model


def _student(root: Path, version: str) -> Path:
    d = root / version
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "distillery_model.json").write_text(json.dumps({"version": version}))
    return d


def test_the_first_start_registers_and_promotes_the_configured_student(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    model = ensure_registry(registry, _student(tmp_path, "student-demo"))
    assert model.version == "student-demo"
    assert registry.pointers()["current"] == "student-demo"


def test_a_refreshed_descendant_of_the_configured_student_keeps_serving(tmp_path):
    demo = _student(tmp_path, "student-demo")
    registry = ModelRegistry(tmp_path / "registry")
    ensure_registry(registry, demo)
    registry.register(_student(tmp_path / "c", "refresh-1"), "refresh-1", {"parent": "student-demo"})
    registry.register(_student(tmp_path / "c", "refresh-2"), "refresh-2", {"parent": "refresh-1"})
    registry.promote("refresh-2")
    assert ensure_registry(registry, demo).version == "refresh-2"
    assert lineage(registry, "refresh-2") == ["refresh-2", "refresh-1", "student-demo"]


def test_another_students_registry_is_refused_with_what_to_do_and_left_untouched(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    ensure_registry(registry, _student(tmp_path, "student-demo"))
    before = (tmp_path / "registry" / "pointers.json").read_text()
    real = _student(tmp_path, "student-real-8l")
    for look in (ensure_registry, serving_model):
        with pytest.raises(RegistryMismatch) as err:
            look(registry, real)
        message = str(err.value)
        assert "student-demo" in message and "student-real-8l" in message
        assert "var_dir" in message and "aside" in message
    assert (tmp_path / "registry" / "pointers.json").read_text() == before
    assert [m.version for m in registry.versions()] == ["student-demo"]


def test_a_read_only_look_at_an_empty_registry_writes_nothing(tmp_path):
    root = tmp_path / "registry"
    model = serving_model(ModelRegistry(root), _student(tmp_path, "student-demo"))
    assert model.version == "student-demo"
    assert ModelRegistry(root).versions() == []
    assert not root.exists()


def test_lineage_stops_at_a_cycle_or_a_missing_parent(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(_student(tmp_path, "a"), "a", {"parent": "b"})
    registry.register(_student(tmp_path, "b"), "b", {"parent": "a"})
    registry.register(_student(tmp_path, "c"), "c", {"parent": "gone"})
    assert lineage(registry, "a") == ["a", "b"]
    assert lineage(registry, "c") == ["c", "gone"]


def test_each_preset_keeps_its_own_state(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILLERY_VAR_DIR", raising=False)
    monkeypatch.delenv("DISTILLERY_REGISTRY_DIR", raising=False)
    demo, real = load_settings(preset="demo"), load_settings(preset="smollm2")
    for where in (
        lambda s: s.var_dir,
        lambda s: s.resolved_registry_dir,
        lambda s: s.store_dsn,
        lambda s: s.spool_dir,
        lambda s: s.logs_dir,
        lambda s: s.tier_dir("student"),
    ):
        assert where(demo) != where(real)
    assert demo.var_dir == Path("var/demo") and real.var_dir == Path("var/smollm2")
    # the demo's models stay where earlier checkouts built them
    assert demo.tier_dir("student") == Path("var/models/student")
