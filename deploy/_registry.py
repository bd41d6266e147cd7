"""The model registry: versioned student directories with lineage, and who serves.

Layout under ``<root>``::

    versions/<version>/            a Hugging Face model directory (+ distillery_model.json)
    versions/<version>/manifest.json   lineage: parent, dataset hash/size, teacher, training
                                       config, gate metrics, created time

or, with ``files_url`` (nodes that share no volume), under that URL, each node pulling a
version into its own cache keyed by the version's digest (``deploy._artifacts``); and, in
its control store (``deploy._control``: files beside the versions by default, or
tables in the PostgreSQL feedback database)::

    pointers                       {"current": v, "previous": v, "canary": v, ...}
    audit (log)                    one entry per register/promote/rollback, append-only
    refresh_request                an operator's pending refresh, taken once by the loop

Pointers change by compare-and-swap (``deploy._control.update``): a crash leaves either
the old or the new pointers, never a mix, and two writers cannot lose each other's change.
A version directory is written under a temporary name and renamed into place, so a retrain
killed mid-way leaves the registry untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.model_dir import MANIFEST_FILE
from deploy._artifacts import VersionFiles, tree_digest
from deploy._control import ControlStore, FileControlStore, open_control_store, take, update
from deploy._rollout import RolloutState
from deploy.errors import ModelNotFound, RegistryError, RollbackFailed

__all__ = ["ModelRegistry", "RegisteredModel", "open_registry"]

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RegisteredModel:
    version: str
    path: Path
    manifest: dict[str, Any]


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ModelRegistry:
    def __init__(
        self, root: Path, control: ControlStore | None = None, *, files: VersionFiles | None = None
    ) -> None:
        """``files`` None: versions under ``root/versions``; else at its URL, and ``get``
        returns this node's cached copy (pulled on first use)."""
        self.root = root
        self._versions = root / "versions"
        self.control: ControlStore = control if control is not None else FileControlStore(root)
        self.files = files
        # Nothing is created until something is written: a read-only command (``models
        # list``, ``drift check``) on a fresh checkout leaves no registry behind.

    # ---- reading ----------------------------------------------------------------------
    def versions(self) -> list[RegisteredModel]:
        """Every version, oldest first. With remote files, nothing is pulled: a path is
        where this node's copy is or would be (``get`` pulls it)."""
        if self.files is not None:
            out = [self._describe(v) for v in self.files.list_versions()]
        elif not self._versions.is_dir():
            return []
        else:
            out = [self.get(p.name) for p in self._versions.iterdir() if (p / MANIFEST).is_file()]
        return sorted(out, key=lambda m: (m.manifest.get("created", 0), m.version))

    def get(self, version: str) -> RegisteredModel:
        if self.files is not None:
            return self._remote(version, pull=True)
        path = self._versions / version
        if not (path / MANIFEST).is_file():
            raise ModelNotFound(f"no model version {version!r} in {self.root}")
        return RegisteredModel(version, path, json.loads((path / MANIFEST).read_text()))

    def _describe(self, version: str) -> RegisteredModel:
        """``version``'s record without its files: what a pointer change needs to check
        (with remote files, ``get`` would pull hundreds of MB onto the node that promotes)."""
        return self.get(version) if self.files is None else self._remote(version, pull=False)

    def _remote(self, version: str, *, pull: bool) -> RegisteredModel:
        assert self.files is not None
        manifest = self.files.manifest(version)
        digest = manifest.get("digest")
        if not digest:
            raise RegistryError(f"version {version!r} at {self.files.url} has no digest")
        path = self.files.pull(version, digest) if pull else self.files.cached(digest)
        return RegisteredModel(version, path, manifest)

    def prune_cache(self) -> list[str]:
        """With remote files: drops this node's cached versions the pointers no longer name
        (current, previous, canary stay: a rollback needs no pull). The digests removed."""
        if self.files is None:
            return []
        data = self._read()
        named = {data.get(k) for k in ("current", "previous", "canary")} - {None}
        keep = set()
        for version in named:
            try:
                keep.add(self.files.manifest(str(version)).get("digest"))
            except ModelNotFound:
                continue
        return self.files.prune(d for d in keep if d)

    def pointers_revision(self) -> str | None:
        """Changes whenever the pointers do (what a follower polls); None before any."""
        entry = self.control.read("pointers")
        return entry.revision if entry is not None else None

    def _read(self) -> dict[str, Any]:
        entry = self.control.read("pointers")
        return dict(entry.value) if entry is not None else {}

    def pointers(self) -> dict[str, str | None]:
        data = self._read()
        return {"current": data.get("current"), "previous": data.get("previous")}

    def canary(self) -> tuple[str | None, float]:
        data = self._read()
        return data.get("canary"), float(data.get("canary_share", 0.0))

    def rollout_state(self) -> RolloutState:
        """What serving replicas follow: current and canary directories, share, pin."""
        data = self._read()
        current, canary = data.get("current"), data.get("canary")
        return RolloutState(
            model_dir=str(self.get(current).path) if current else None,
            canary_dir=str(self.get(canary).path) if canary else None,
            canary_share=float(data.get("canary_share", 0.0)) if canary else 0.0,
            threshold_override=data.get("threshold_override"),
        )

    def threshold_override(self) -> float | None:
        value = self._read().get("threshold_override")
        return None if value is None else float(value)

    def set_threshold_override(
        self, threshold: float | None, *, reason: str = "", actor: str = "cli"
    ) -> None:
        """Pins the escalation threshold for every student version (``None`` returns to each
        version's calibrated one). It survives promotions and rollbacks: it is an operator's
        decision (e.g. escalate less while the teacher is degraded), not a model property."""
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise RegistryError(f"threshold must be in [0, 1], got {threshold}")

        def pin(data: dict[str, Any] | None) -> dict[str, Any]:
            data = dict(data or {})
            if threshold is None:
                data.pop("threshold_override", None)
            else:
                data["threshold_override"] = threshold
            return data

        update(self.control, "pointers", pin)
        self._log("threshold", threshold=threshold, reason=reason, actor=actor)

    # ---- refresh requests (admin API -> refresh loop) -------------------------------
    def request_refresh(self, *, reason: str = "", actor: str = "cli") -> dict[str, Any]:
        """Asks the refresh loop (wherever it runs) for a refresh at its next tick."""
        request = {"requested_at": time.time(), "reason": reason, "actor": actor}
        self.control.put("refresh_request", request)
        self._log("refresh_requested", reason=reason, actor=actor)
        return request

    def pending_refresh(self) -> dict[str, Any] | None:
        entry = self.control.read("refresh_request")
        return dict(entry.value) if entry is not None else None

    def take_refresh_request(self) -> dict[str, Any] | None:
        """The pending request, once: of two loops, only one gets it."""
        return take(self.control, "refresh_request")

    def start_canary(self, version: str, share: float, *, actor: str = "cli") -> None:
        self._describe(version)
        if not 0.0 < share <= 1.0:
            raise RegistryError(f"canary share must be in (0, 1], got {share}")
        update(
            self.control, "pointers", lambda data: {**(data or {}), "canary": version, "canary_share": share}
        )
        self._log("canary", version=version, share=share, actor=actor)

    def end_canary(self, *, reason: str = "", actor: str = "cli") -> None:
        ended: list[str | None] = []

        def end(data: dict[str, Any] | None) -> dict[str, Any]:
            data = dict(data or {})
            ended[:] = [data.pop("canary", None)]
            data.pop("canary_share", None)
            return data

        update(self.control, "pointers", end)
        self._log("canary_end", version=ended[0] if ended else None, reason=reason, actor=actor)

    @staticmethod
    def _sticky(data: dict[str, Any]) -> dict[str, Any]:
        value = data.get("threshold_override")
        return {} if value is None else {"threshold_override": value}

    def current(self) -> RegisteredModel | None:
        version = self.pointers()["current"]
        return self.get(version) if version else None

    def audit(self) -> list[dict[str, Any]]:
        return self.control.entries("audit")

    # ---- writing ----------------------------------------------------------------------
    def register(self, source_dir: Path, version: str, manifest: dict[str, Any]) -> RegisteredModel:
        """Copies a finished model directory in as ``version`` (atomically: by rename, or,
        at a URL, manifest last), with the digest of its files in its manifest."""
        remote = self.files
        target = self._versions / version
        if remote.exists(version) if remote is not None else target.exists():
            raise RegistryError(f"version {version!r} already exists")
        parent = self._versions if remote is None else remote.cache_dir
        staging = parent / f".staging-{version}-{os.getpid()}"
        parent.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        shutil.copytree(source_dir, staging)
        distillery_manifest = staging / MANIFEST_FILE
        own = json.loads(distillery_manifest.read_text()) if distillery_manifest.is_file() else {}
        own["version"] = version
        _write_json_atomic(distillery_manifest, own)
        digest = tree_digest(staging)
        full = {"version": version, "created": time.time(), **manifest, "digest": digest}
        _write_json_atomic(staging / MANIFEST, full)
        if remote is None:
            os.replace(staging, target)
        else:
            remote.upload(staging, version)
            target = remote.adopt(staging, digest)
        self._log("register", version=version, parent=manifest.get("parent"))
        return RegisteredModel(version, target, json.loads((target / MANIFEST).read_text()))

    def promote(self, version: str, *, reason: str = "", actor: str = "cli") -> RegisteredModel:
        """Makes ``version`` current; its record (``get`` has its files on this node)."""
        model = self._describe(version)
        previous: list[str | None] = []

        def promote(data: dict[str, Any] | None) -> dict[str, Any] | None:
            data = data or {}
            previous[:] = [data.get("current")]
            if data.get("current") == version:
                return data or None
            # A promotion ends any canary; an operator's threshold override stays.
            return {"current": version, "previous": data.get("current"), **self._sticky(data)}

        update(self.control, "pointers", promote)
        if previous and previous[0] != version:
            self._log("promote", version=version, previous=previous[0], reason=reason, actor=actor)
        return model

    def rollback(self, *, reason: str = "", actor: str = "cli") -> RegisteredModel:
        moved: list[tuple[str, str | None]] = []

        def back(data: dict[str, Any] | None) -> dict[str, Any]:
            data = data or {}
            if not data.get("previous"):
                raise RollbackFailed("no previous version to roll back to")
            self._describe(data["previous"])
            moved[:] = [(data["previous"], data.get("current"))]
            return {"current": data["previous"], "previous": data.get("current"), **self._sticky(data)}

        update(self.control, "pointers", back)
        version, rolled_back = moved[0]
        self._log("rollback", version=version, rolled_back=rolled_back, reason=reason, actor=actor)
        return self._describe(version)

    def _log(self, action: str, **fields: Any) -> None:
        self.control.append("audit", {"ts": time.time(), "action": action, **fields})


def open_registry(
    root: Path,
    control_dsn: str | None = None,
    *,
    scope: str = "default",
    files_url: str | None = None,
    cache_dir: Path | None = None,
) -> ModelRegistry:
    """The registry under ``root`` with its control store (files there, or the database);
    with ``files_url``, its versions' files there, cached in ``cache_dir`` (default
    ``root/cache``)."""
    files = VersionFiles(files_url, cache_dir or root / "cache") if files_url else None
    return ModelRegistry(root, open_control_store(root, control_dsn, scope=scope), files=files)
