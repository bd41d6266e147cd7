"""Each package's public surface is exactly its ``__all__`` (httpx's test_exported_members)."""

import importlib

import pytest


@pytest.mark.parametrize("name", ["common", "router", "demo"])
def test_all_names_exist_and_are_unique(name):
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__)
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.{attr} is in __all__ but missing"
    public = {n for n in vars(module) if not n.startswith("_")}
    submodules = {n for n in public if type(getattr(module, n)).__name__ == "module"}
    assert public - submodules == set(module.__all__)
