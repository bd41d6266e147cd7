"""Builds a tier's backend from config, importing heavy engines only when asked for."""

from __future__ import annotations

from pathlib import Path

from router._backend import Backend
from router.config import BackendConfig

__all__ = ["build_backend"]


def build_backend(config: BackendConfig, *, default_dir: Path, model_id: str) -> Backend:
    """``default_dir`` is where the tier's model lives unless ``config.model_dir`` says otherwise."""
    if config.kind == "openai":
        from router._openai_backend import OpenAIHTTPBackend

        assert config.base_url is not None and config.model is not None
        return OpenAIHTTPBackend(
            config.base_url,
            config.model,
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            timeout_s=config.timeout_s,
        )
    from router._transformers_backend import TransformersBackend

    return TransformersBackend(
        config.model_dir or default_dir, model_id=model_id, num_threads=config.num_threads
    )
