"""Each package's public surface is exactly its ``__all__`` (httpx's test_exported_members),
and the unit tier stays a tier without Ray (docs/architecture.md: unit tests start nothing)."""

import importlib
import re
from pathlib import Path

import pytest

PACKAGES = ["common", "demo", "deploy", "distillery", "feedback", "gateway", "retrain", "router"]
UNIT = Path(__file__).resolve().parent


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_and_are_unique(name):
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__)
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.{attr} is in __all__ but missing"
    public = {n for n in vars(module) if not n.startswith("_")}
    submodules = {n for n in public if type(getattr(module, n)).__name__ == "module"}
    assert public - submodules == {n for n in module.__all__ if not n.startswith("_")}


def test_every_package_is_covered():
    root = UNIT.parents[1]
    found = {p.parent.name for p in root.glob("*/__init__.py") if (p.parent / "py.typed").is_file()}
    assert found == set(PACKAGES)


def test_no_unit_test_imports_ray():
    """Tests that need Serve's internals live in tests/integration/."""
    pattern = re.compile(r"^\s*(import ray\b|from ray\b)", re.MULTILINE)
    offenders = [str(p.relative_to(UNIT)) for p in UNIT.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
