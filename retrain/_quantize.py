"""Quantized candidates: a new registry version from an existing one, gated like any other.

Quantization changes behaviour, so a quantized version goes through what a distilled
candidate does: recalibration (it moves log-probs), the gate against its parent on the
regression suite and held-out teacher answers (agreement, ECE, escalation rate at its own
threshold: one that escalates more than its parent is refused), plus agreement with the
parent's own answers (``GateConfig.min_parent_agreement``); then the live canary.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError
from common.model_dir import (
    CALIBRATION_FILE,
    ModelManifest,
    ModelSource,
    QuantizationRecord,
)
from deploy import ModelRegistry, RegisteredModel
from feedback import FeedbackStore
from retrain._dataset import Pair
from retrain._gate import BackendFactory, GateReport, recalibration, run_gate, transformers_factory
from retrain._suite import build_suite
from retrain.config import GateConfig
from router import AgreementMetric
from router._quantize import SCHEMES

__all__ = ["QuantizeOutcome", "parent_agreement", "quantize_version", "quantized_version_name"]


@dataclass
class QuantizeOutcome:
    version: str
    scheme: str
    passed: bool
    reasons: list[str]
    gate: GateReport
    agreement_with_parent: float
    model: RegisteredModel
    timings_s: dict[str, float]


def quantized_version_name(parent: str, scheme: str) -> str:
    """``<parent>-<scheme>``: the scheme is in every answer's ``model_version`` and in the
    per-version metrics, so dashboards tell a quantized version from its parent."""
    return f"{parent}-{scheme}"


def parent_agreement(ours: Sequence[str], theirs: Sequence[str], agreement: AgreementMetric) -> float:
    """Share of the same requests on which the candidate answers as its parent (greedy)."""
    if not ours:
        return 0.0
    return sum(agreement(o, t) for o, t in zip(ours, theirs, strict=True)) / len(ours)


def quantize_version(
    registry: ModelRegistry,
    version: str,
    scheme: str,
    *,
    workdir: Path,
    gate_config: GateConfig,
    store: FeedbackStore | None = None,
    suite: Sequence[Pair] | None = None,
    scorer: str = "mean_logprob",
    agreement: AgreementMetric | None = None,
    backend_factory: BackendFactory = transformers_factory,
    holdout_fraction: float = 0.1,
) -> QuantizeOutcome:
    """Makes, gates and registers ``<version>-<scheme>``; the caller canaries or promotes it
    when ``passed`` (``distillery models quantize``, the loop's ``quantize_after_promotion``)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown quantization scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    parent = registry.get(version)
    parent_manifest = ModelManifest.load(parent.path)
    if parent_manifest is not None and parent_manifest.quantization is not None:
        raise ConfigError(f"{version} is already quantized ({parent_manifest.quantization.scheme})")
    agree = agreement or AgreementMetric()
    name = quantized_version_name(version, scheme)
    timings: dict[str, float] = {}
    candidate_dir = workdir / name
    if candidate_dir.exists():
        shutil.rmtree(candidate_dir)
    # The parent's weights and tokenizer; its calibration and gate report belong to it.
    shutil.copytree(
        parent.path, candidate_dir, ignore=shutil.ignore_patterns(CALIBRATION_FILE, "gate_report.json")
    )
    if suite is None:
        suite = build_suite(gate_config, parent.path, store, holdout_fraction=holdout_fraction)
    calibrated_on = f"regression suite + held-out teacher answers ({len(suite)} requests)"
    manifest = parent_manifest or ModelManifest(version=name)
    manifest.version, manifest.parent = name, version
    manifest.source = ModelSource(kind="quantized", path=str(parent.path), detail={"scheme": scheme})
    manifest.quantization = QuantizationRecord(scheme=scheme, parent=version, calibration=calibrated_on)
    manifest.save(candidate_dir)
    t0 = time.monotonic()
    gate = run_gate(
        parent.path,
        candidate_dir,
        [],
        suite,
        gate_config,
        scorer=scorer,
        agreement=agree,
        backend_factory=backend_factory,
    )
    timings["gate"] = time.monotonic() - t0
    # Both answered the same suite greedily inside the gate: compare those answers.
    with_parent = parent_agreement(gate.candidate.answers, gate.current.answers, agree)
    reasons = [] if gate.passed else list(gate.reasons)
    if with_parent < gate_config.min_parent_agreement:
        reasons.append(
            f"agreement with the parent {with_parent:.3f} < required {gate_config.min_parent_agreement:.3f}"
        )
    passed = not reasons
    (candidate_dir / "gate_report.json").write_text(
        json.dumps({**gate.to_dict(), "agreement_with_parent": with_parent, "reasons": reasons}, indent=2)
    )
    recalibration(
        gate,
        gate_config,
        scorer=scorer,
        agreement=agree.name,
        n=len(suite),
        source=f"gate recalibration after {scheme} quantization ({calibrated_on})",
    ).save(candidate_dir)
    model = registry.register(
        candidate_dir,
        name,
        {
            "parent": version,
            "quantization": manifest.quantization.model_dump(),
            "agreement_with_parent": round(with_parent, 4),
            "gate": {**gate.to_dict(), "passed": passed, "reasons": reasons or ["all checks passed"]},
        },
    )
    return QuantizeOutcome(
        name,
        scheme,
        passed,
        reasons or ["all checks passed"],
        gate,
        with_parent,
        model,
        {k: round(v, 2) for k, v in timings.items()},
    )
