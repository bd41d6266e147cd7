"""A model version's files anywhere fsspec reaches, pulled into a node-local cache.

Nodes of a cluster share no volume: the registry's version directories then live at a URL
(``registry_url``: ``file://`` for a mount, ``s3://``, ``gs://``, ``az://`` with that
filesystem's fsspec package installed) and every node that serves or trains a version pulls
its files once into ``<cache>/<digest>/``. The digest is the version's content (each file's
path and SHA-256), recorded in its ``manifest.json`` when it is registered; a pull is
checked against it before the directory is renamed into place, so a torn or tampered copy
is never served, and two versions with the same bytes share one cached copy.

Object stores have no atomic rename, so a version exists only once its ``manifest.json``
is written, and that file is written last: a registration killed half-way leaves files no
reader ever looks at.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploy.errors import ModelNotFound, RegistryError

__all__ = ["VersionFiles", "tree_digest"]

MANIFEST = "manifest.json"
"""The registry's per-version record (lineage, digest): not part of the digest itself."""
CHUNK = 1 << 20
_DIGEST_DIR = re.compile(r"^[0-9a-f]{64}$")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def tree_digest(root: Path) -> str:
    """SHA-256 over each file's relative path and SHA-256 (``manifest.json`` aside)."""
    digest = hashlib.sha256()
    for rel in _tree_files(root):
        digest.update(f"{rel}\0{_file_sha256(root / rel)}\n".encode())
    return digest.hexdigest()


class VersionFiles:
    """Version directories under ``url`` (``<url>/versions/<version>/``) and their copies
    in ``cache_dir``, one directory per digest."""

    def __init__(self, url: str, cache_dir: Path) -> None:
        from fsspec.core import url_to_fs

        self.url = url.rstrip("/")
        self.cache_dir = cache_dir
        self._fs, root = url_to_fs(self.url)
        self._root = str(root).rstrip("/") + "/versions"

    def _base(self, version: str) -> str:
        return f"{self._root}/{version}"

    def exists(self, version: str) -> bool:
        return bool(self._fs.exists(f"{self._base(version)}/{MANIFEST}"))

    def manifest(self, version: str) -> dict[str, Any]:
        try:
            with self._fs.open(f"{self._base(version)}/{MANIFEST}", "r") as f:
                data: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise ModelNotFound(f"no model version {version!r} in {self.url}") from None
        return data

    def list_versions(self) -> list[str]:
        try:
            found = self._fs.glob(f"{self._root}/*/{MANIFEST}")
        except FileNotFoundError:
            return []
        return sorted(str(p).rstrip("/").split("/")[-2] for p in found)

    def cached(self, digest: str) -> Path:
        return self.cache_dir / digest

    def upload(self, local: Path, version: str) -> None:
        """``local`` (with its ``manifest.json``) as ``version``: every file, then the
        manifest, so the version appears whole or not at all. The registry checked that
        ``version`` is new before it staged ``local``."""
        base = self._base(version)
        for rel in _tree_files(local):
            self._put(local / rel, f"{base}/{rel}")
        self._put(local / MANIFEST, f"{base}/{MANIFEST}")

    def _put(self, source: Path, target: str) -> None:
        self._fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        self._fs.put_file(str(source), target)

    def adopt(self, local: Path, digest: str) -> Path:
        """Moves a directory just uploaded into the cache (the registering node needs no pull)."""
        target = self.cached(digest)
        if target.is_dir():
            shutil.rmtree(local)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, target)
        return target

    def pull(self, version: str, digest: str) -> Path:
        """The version's files in this node's cache, downloaded the first time and checked
        against ``digest`` before they are renamed into place."""
        target = self.cached(digest)
        if target.is_dir():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = self.cache_dir / f".partial-{digest[:16]}-{os.getpid()}"
        if partial.exists():
            shutil.rmtree(partial)
        base = self._base(version)
        for remote in self._fs.find(base):
            rel = str(remote)[len(base) :].lstrip("/")
            local = partial / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            self._fs.get_file(remote, str(local))
        got = tree_digest(partial)
        if got != digest:
            shutil.rmtree(partial, ignore_errors=True)
            raise RegistryError(
                f"version {version!r} at {self.url} does not match its digest "
                f"({got[:12]} != {digest[:12]}): refusing a torn or altered copy"
            )
        try:
            os.replace(partial, target)
        except OSError:  # another process on this node pulled it first
            shutil.rmtree(partial, ignore_errors=True)
        return target

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Removes this node's cached copies but those of ``keep`` (digests); the removed
        digests. Only finished copies are candidates (a pull in progress is a
        ``.partial-*`` directory); an engine that loaded a removed copy keeps its open
        files (Linux frees them on close)."""
        kept = set(keep)
        if not self.cache_dir.is_dir():
            return []
        removed = []
        for entry in self.cache_dir.iterdir():
            if entry.is_dir() and _DIGEST_DIR.match(entry.name) and entry.name not in kept:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return sorted(removed)
