"""One refresh: dataset -> TRL distillation -> gate -> registry. Timed per stage.

The candidate is registered whatever the gate says (its report is its record); only a
passing candidate is offered for canary/promotion by the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import ModelRegistry, RegisteredModel
from feedback import FeedbackStore
from retrain._dataset import Pair, build_dataset, load_reference
from retrain._gate import GateReport, run_gate
from retrain._train import distill
from retrain.config import DistillConfig, GateConfig

__all__ = ["RefreshOutcome", "ensure_registry", "run_refresh"]

CALIBRATION_FILE = "calibration.json"


@dataclass
class RefreshOutcome:
    version: str
    passed: bool
    gate: GateReport
    model: RegisteredModel
    timings_s: dict[str, float] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)


def ensure_registry(registry: ModelRegistry, serving_dir: Path) -> RegisteredModel:
    """The registry's current version; the first time, the serving student becomes it."""
    current = registry.current()
    if current is not None:
        return current
    manifest_file = serving_dir / "distillery_model.json"
    version = json.loads(manifest_file.read_text()).get("version") if manifest_file.is_file() else None
    version = version or serving_dir.name
    try:
        model = registry.get(version)
    except Exception:
        model = registry.register(serving_dir, version, {"parent": None, "source": "initial"})
    registry.promote(model.version, reason="initial version", actor="bootstrap")
    return model


def run_refresh(
    store: FeedbackStore,
    registry: ModelRegistry,
    *,
    workdir: Path,
    suite: Sequence[Pair],
    distill_config: DistillConfig,
    gate_config: GateConfig,
    teacher_version: str | None = None,
    since: float | None = None,
    scorer: str = "mean_logprob",
    progress: Callable[[int, int, float], None] | None = None,
    teacher_dir: Path | None = None,
) -> RefreshOutcome:
    current = registry.current()
    if current is None:
        raise RuntimeError("the registry has no current version; call ensure_registry first")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    dataset = build_dataset(store, load_reference(current.path), distill_config, since=since)
    timings["dataset"] = time.monotonic() - t0
    version = f"student-{time.strftime('%Y%m%d-%H%M%S')}-{dataset.sha256[:6]}"
    candidate_dir = workdir / version
    t0 = time.monotonic()
    trained = distill(
        current.path, dataset, candidate_dir, distill_config, progress=progress, teacher_dir=teacher_dir
    )
    timings["train"] = time.monotonic() - t0
    t0 = time.monotonic()
    report = run_gate(current.path, candidate_dir, dataset.holdout, suite, gate_config, scorer=scorer)
    timings["gate"] = time.monotonic() - t0
    (candidate_dir / "gate_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    (candidate_dir / CALIBRATION_FILE).write_text(
        json.dumps(
            {
                "scorer": scorer,
                "threshold": report.candidate.threshold,
                "target": {"agreement": gate_config.target_agreement},
                "escalation_rate": report.candidate.escalation_rate,
                "agreement": report.candidate.served_agreement,
                "source": "gate recalibration (holdout + regression suite)",
                "created": time.time(),
            },
            indent=2,
        )
    )
    ds_info = {
        "sha256": dataset.sha256,
        "size": len(dataset.train),
        "new": dataset.new_examples,
        "replay": dataset.replay_examples,
        "holdout": len(dataset.holdout),
        "by_skill": dataset.by_skill,
    }
    t0 = time.monotonic()
    model = registry.register(
        candidate_dir,
        version,
        {
            "parent": current.version,
            "dataset": ds_info,
            "teacher": teacher_version,
            "training": {**distill_config.model_dump(), "seconds": trained.seconds, "steps": trained.steps},
            "gate": report.to_dict(),
        },
    )
    timings["register"] = time.monotonic() - t0
    return RefreshOutcome(
        version, report.passed, report, model, {k: round(v, 2) for k, v in timings.items()}, ds_info
    )
