"""The loop metrics the alerts and dashboard annotations read: every refresh result exists
from 0, and the last-success time survives a restart of the loop (the "no successful
refresh in 36 h" alert would otherwise fire after every restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deploy import ModelRegistry
from feedback import SQLiteStore
from retrain import LoopConfig, RefreshLoop, ensure_registry
from retrain._refresh import RefreshOutcome


def _loop(tmp: Path, registry: ModelRegistry, now: float = 1_000.0) -> RefreshLoop:
    return RefreshLoop(
        SQLiteStore(tmp / "feedback.db"),
        registry,
        LoopConfig(canary=False),
        workdir=tmp / "work",
        suite=[],
        fetch_metrics=None,
        clock=lambda: now,
    )


def _samples(loop: RefreshLoop) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(loop.metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _model_dir(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_every_refresh_result_is_exported_from_zero(tmp_path: Path) -> None:
    samples = _samples(_loop(tmp_path, ModelRegistry(tmp_path / "registry")))
    results = {
        dict(labels)["result"]: v
        for (name, labels), v in samples.items()
        if name == "distillery_refreshes_total"
    }
    assert results == {"promoted": 0, "refused": 0, "rolled_back": 0, "skipped": 0, "failed": 0}
    # nothing registered, nothing promoted: the gauge stays at 0
    assert samples[("distillery_refresh_last_success_timestamp_seconds", ())] == 0


def test_last_success_starts_at_the_serving_versions_registration(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    model = ensure_registry(registry, _model_dir(tmp_path, "student"))
    samples = _samples(_loop(tmp_path, registry))
    assert samples[("distillery_refresh_last_success_timestamp_seconds", ())] == model.manifest["created"]


def test_last_success_of_a_promotion_survives_a_restart(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    ensure_registry(registry, _model_dir(tmp_path, "student"))
    candidate = registry.register(_model_dir(tmp_path, "candidate"), "v2", {"parent": "student"})
    gate: Any = None
    outcome = RefreshOutcome(version="v2", passed=True, gate=gate, model=candidate)
    loop = _loop(tmp_path, registry, now=123_456.0)
    event = loop._roll_out(123_456.0, "nightly", {}, outcome)
    assert event.result == "promoted" and registry.current() is not None
    assert registry.pointers()["current"] == "v2"
    restarted = _samples(_loop(tmp_path, registry, now=999_999.0))
    assert restarted[("distillery_refresh_last_success_timestamp_seconds", ())] == 123_456.0


def test_a_tick_that_raises_is_an_event_a_remote_follower_sees(tmp_path: Path) -> None:
    import json
    import threading

    from retrain import EVENTS_FILE

    registry = ModelRegistry(tmp_path / "registry")
    loop = _loop(tmp_path, registry)

    def broken() -> Any:
        loop.stop()  # one tick, then run() returns
        raise RuntimeError("the store is gone")

    loop.tick = broken  # type: ignore[method-assign]
    worker = threading.Thread(target=loop.run)
    worker.start()
    worker.join(10)
    rows = [json.loads(line) for line in (registry.root / EVENTS_FILE).read_text().splitlines()]
    assert rows[-1]["result"] == "failed" and "RuntimeError: the store is gone" in rows[-1]["detail"]
