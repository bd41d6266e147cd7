"""Model versions at a URL (``registry_url``), pulled per node into a digest-keyed cache.

The URL is fsspec's ``file://`` (the same code path as ``s3://``: fsspec's filesystem
API, no shared directory assumed): the "bucket" and each node's cache are separate
directories, and a registry opened with one node's cache never reads another's.
"""

import json
from pathlib import Path

import pytest

from deploy import ModelNotFound, RegistryError, open_registry
from deploy._artifacts import tree_digest


def _model_dir(tmp_path: Path, name: str, weights: bytes = b"w" * 1000) -> Path:
    d = tmp_path / "src" / name
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "model.safetensors").write_bytes(weights)
    (d / "distillery_model.json").write_text(json.dumps({"version": "old"}))
    return d


def _node(tmp_path: Path, node: str, bucket: Path):
    return open_registry(
        tmp_path / node / "registry",
        files_url=f"file://{bucket}",
        cache_dir=tmp_path / node / "cache",
    )


def test_a_version_registered_on_one_node_is_pulled_by_digest_on_another(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    trainer = _node(tmp_path, "trainer", bucket)
    model = trainer.register(_model_dir(tmp_path, "a"), "v1", {"parent": None})
    digest = model.manifest["digest"]
    # The registering node keeps its copy in its cache, under the digest; nothing under its
    # registry directory holds model files.
    assert model.path == tmp_path / "trainer" / "cache" / digest
    assert not (tmp_path / "trainer" / "registry" / "versions").exists()
    assert tree_digest(model.path) == digest
    assert (bucket / "versions" / "v1" / "manifest.json").is_file()

    # Another node (its own registry root and cache; same control store would be the
    # database in production, here the pointers are not involved) pulls on first use.
    server = _node(tmp_path, "server", bucket)
    listed = server.versions()
    assert [m.version for m in listed] == ["v1"]
    assert not listed[0].path.exists()  # listing pulls nothing
    got = server.get("v1")
    assert got.path == tmp_path / "server" / "cache" / digest
    assert (got.path / "sub" / "model.safetensors").read_bytes() == b"w" * 1000
    assert json.loads((got.path / "distillery_model.json").read_text())["version"] == "v1"
    # The second get is the cache: removing the bucket's copy does not matter to it.
    (bucket / "versions" / "v1" / "sub" / "model.safetensors").unlink()
    assert server.get("v1").path == got.path


def test_a_torn_or_altered_copy_is_refused_and_never_cached(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    _node(tmp_path, "trainer", bucket).register(_model_dir(tmp_path, "a"), "v1", {})
    (bucket / "versions" / "v1" / "sub" / "model.safetensors").write_bytes(b"x" * 1000)
    server = _node(tmp_path, "server", bucket)
    with pytest.raises(RegistryError, match="does not match its digest"):
        server.get("v1")
    cache = tmp_path / "server" / "cache"
    assert [p.name for p in cache.iterdir()] == []


def test_a_version_without_its_manifest_does_not_exist(tmp_path: Path) -> None:
    """Object stores have no rename: the manifest is written last, so a registration killed
    before it leaves files no reader sees."""
    bucket = tmp_path / "bucket"
    half = bucket / "versions" / "v9"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    server = _node(tmp_path, "server", bucket)
    assert server.versions() == []
    with pytest.raises(ModelNotFound):
        server.get("v9")


def test_versions_are_unique_at_the_url(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    _node(tmp_path, "a", bucket).register(_model_dir(tmp_path, "a"), "v1", {})
    with pytest.raises(RegistryError, match="already exists"):
        _node(tmp_path, "b", bucket).register(_model_dir(tmp_path, "b", b"other"), "v1", {})


def test_identical_bytes_share_one_cached_copy_and_local_registries_record_the_digest(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    node = _node(tmp_path, "n", bucket)
    first = node.register(_model_dir(tmp_path, "a"), "v1", {})
    # distillery_model.json names the version, so two versions' bytes differ there.
    assert node.register(_model_dir(tmp_path, "b"), "v2", {}).path != first.path
    local = open_registry(tmp_path / "local")
    kept = local.register(_model_dir(tmp_path, "c"), "v1", {})
    assert kept.path == tmp_path / "local" / "versions" / "v1"
    assert kept.manifest["digest"] == tree_digest(kept.path) == first.manifest["digest"]


def test_a_nodes_cache_keeps_what_the_pointers_name_and_drops_the_rest(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    trainer = _node(tmp_path, "trainer", bucket)
    for i, name in enumerate(("v1", "v2", "v3")):
        trainer.register(_model_dir(tmp_path, name, bytes([i]) * 100), name, {})
    server = _node(tmp_path, "server", bucket)
    digests = {m.version: server.get(m.version).manifest["digest"] for m in server.versions()}
    pulling = tmp_path / "server" / "cache" / ".partial-abc-1"
    pulling.mkdir()  # another process's pull in progress is never touched
    server.promote("v1")
    server.promote("v2")
    server.start_canary("v3", 0.1)
    assert server.prune_cache() == []  # current, previous and canary: all kept
    server.end_canary()
    assert server.prune_cache() == [digests["v3"]]
    assert sorted(p.name for p in (tmp_path / "server" / "cache").iterdir()) == sorted(
        [digests["v1"], digests["v2"], ".partial-abc-1"]
    )
    # A rollback needs no pull (previous was kept), and a version pruned is pulled again on use.
    assert server.rollback().path.is_dir()
    assert server.get("v3").path.is_dir()


def test_pointer_changes_check_a_version_without_pulling_its_files(tmp_path: Path) -> None:
    """The node that promotes (the loop's, the admin API's) only needs the manifest."""
    bucket = tmp_path / "bucket"
    trainer = _node(tmp_path, "trainer", bucket)
    trainer.register(_model_dir(tmp_path, "a", b"1" * 100), "v1", {})
    trainer.register(_model_dir(tmp_path, "b", b"2" * 100), "v2", {})
    controller = _node(tmp_path, "controller", bucket)
    controller.promote("v1")
    controller.start_canary("v2", 0.2)
    controller.promote("v2")
    assert controller.rollback().version == "v1"
    assert not (tmp_path / "controller" / "cache").exists()
    with pytest.raises(ModelNotFound):
        controller.promote("v9")
