"""Shared fixtures: the demo models (built once, cached under var/) and a live Serve app."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("DISTILLERY_TEST_MODELS_DIR", REPO / "var" / "models"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def demo_models() -> Path:
    """The full demo teacher/student (``make test`` builds them first; ~3 min if missing)."""
    from demo import build_demo_models
    from gateway._calibrate import run_calibration
    from gateway.settings import load_settings

    build_demo_models(MODELS_DIR)
    if not (MODELS_DIR / "student" / "calibration.json").is_file():
        run_calibration(load_settings(models_dir=str(MODELS_DIR)))
    return MODELS_DIR


@pytest.fixture(scope="session")
def serve_url(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real Ray Serve application on the demo models, once per test session."""
    import ray
    from ray import serve

    from gateway.app import run_app
    from gateway.settings import load_settings

    port = free_port()
    settings = load_settings(
        models_dir=str(demo_models),
        var_dir=str(REPO / "var"),
        server={"port": port},
        cascade={"teacher_timeout_s": 30},
    )
    run_app(settings)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
