"""Quantized students: produced from a registry version, recalibrated and gated against
their parent, then canaried, promoted and rolled back on the live stack like any version.

The demo student is small enough to quantize and gate in seconds; bf16 keeps its answers
(it passes the default 98% agreement with the parent here), the int8 schemes change a few
percent of them. A broken quantizer is simulated by damaging the weights the scheme
produced: the gate must refuse that candidate, and nothing serves it.
"""

from __future__ import annotations

import time

import httpx
import pytest

from common.model_dir import CalibrationRecord, ModelManifest
from deploy import CanaryConfig, CanaryController, ModelRegistry
from retrain import GateConfig, ensure_registry, quantize_version
from tests.integration.test_hot_swap import Traffic
from tests.integration.test_hot_swap import _until as until_answers_show

pytestmark = pytest.mark.integration


def _health(url: str) -> dict:
    return httpx.get(f"{url}/healthz", timeout=10).json()


def _until(url: str, key: str, value: object, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (health := _health(url)).get(key) != value:
        assert time.monotonic() < deadline, f"{key} never became {value!r}: {health}"
        time.sleep(0.2)
    return health


def test_a_quantized_version_is_gated_canaried_promoted_and_rolled_back_live(live_stack, tmp_path):
    settings = live_stack.settings
    registry = ModelRegistry(settings.resolved_registry_dir)
    initial = ensure_registry(registry, settings.tier_dir("student"))
    outcome = quantize_version(registry, initial.version, "bf16", workdir=tmp_path, gate_config=settings.gate)
    assert outcome.passed, outcome.reasons
    assert outcome.version == f"{initial.version}-bf16" and outcome.agreement_with_parent >= 0.98
    # Lineage and its own calibration: quantization moves log-probs, so it is recalibrated.
    manifest = ModelManifest.load(outcome.model.path)
    assert manifest is not None and manifest.quantization is not None
    assert (manifest.quantization.scheme, manifest.quantization.parent, manifest.parent) == (
        "bf16",
        initial.version,
        initial.version,
    )
    cal = CalibrationRecord.load(outcome.model.path)
    assert cal is not None and cal.student_version == outcome.version and "bf16" in cal.source
    assert outcome.model.manifest["gate"]["passed"] is True

    def fetch() -> str:
        return httpx.get(f"{live_stack.url}/metrics", timeout=10).text

    controller = CanaryController(
        registry, fetch, CanaryConfig(share=0.5, min_requests=30, timeout_s=120), poll_s=1.0
    )
    try:
        with Traffic(live_stack.url, workers=3, model="distillery") as traffic:
            verdict, cur, can = controller.run(outcome.version)
            assert verdict == "promote", (cur, can)
            health = _until(live_stack.url, "student", outcome.version)
            assert health["student_quantization"] == "bf16"
            until_answers_show(traffic, time.monotonic(), {outcome.version})
            registry.rollback(reason="test rollback", actor="test")
            health = _until(live_stack.url, "student", initial.version)
            assert health["student_quantization"] is None
        assert set(traffic.statuses) == {200} and traffic.errors == []
    finally:
        registry.promote(initial.version, reason="test cleanup", actor="test")


def test_a_quantized_candidate_with_damaged_weights_is_refused(live_stack, tmp_path, monkeypatch):
    import torch

    import router._transformers_backend as tb
    from router._quantize import apply_torch_scheme

    def damaged(model, scheme):  # a broken quantizer: the scheme, then noise on every weight
        model = apply_torch_scheme(model, scheme)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
        return model

    monkeypatch.setattr(tb, "apply_torch_scheme", damaged)
    settings = live_stack.settings
    registry = ModelRegistry(settings.resolved_registry_dir)
    initial = ensure_registry(registry, settings.tier_dir("student"))
    before = registry.pointers()
    outcome = quantize_version(
        registry, initial.version, "int8_dynamic_per_channel", workdir=tmp_path, gate_config=GateConfig()
    )
    assert not outcome.passed
    assert any("agreement with the parent" in r for r in outcome.reasons), outcome.reasons
    assert outcome.agreement_with_parent < 0.5
    assert registry.pointers() == before  # refused: registered for the record, never served
    assert outcome.model.manifest["gate"]["passed"] is False


def test_the_loop_option_quantizes_a_version_and_rolls_it_out(demo_models, tmp_path):
    from feedback import SQLiteStore
    from retrain import LoopConfig, RefreshLoop

    registry = ModelRegistry(tmp_path / "registry")
    initial = ensure_registry(registry, demo_models / "student")
    loop = RefreshLoop(
        SQLiteStore(tmp_path / "feedback.db"),
        registry,
        LoopConfig(canary=False, quantize_after_promotion="bf16"),
        workdir=tmp_path / "candidates",
        fetch_metrics=None,
    )
    event = loop.quantize(initial.version, "bf16")
    assert (event.trigger, event.result, event.version) == ("quantize", "promoted", f"{initial.version}-bf16")
    assert registry.pointers() == {"current": f"{initial.version}-bf16", "previous": initial.version}
