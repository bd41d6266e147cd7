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
from typing import Any, Protocol

from common.model_dir import REFERENCE_FILE, ModelManifest, ModelSource, read_model_version
from deploy import ModelNotFound, ModelRegistry, RegisteredModel, RegistryMismatch
from feedback import FeedbackStore
from retrain._dataset import Pair, build_dataset, load_reference, save_pairs
from retrain._gate import BackendFactory, GateReport, recalibration, run_gate, transformers_factory
from retrain._labels import SecondOpinion, backend_opinion
from retrain._replay import served_pairs
from retrain._suite import build_suite
from retrain._train import distill
from retrain.config import DistillConfig, GateConfig
from router import AgreementMetric

__all__ = [
    "RefreshOutcome",
    "Refresher",
    "check_lineage",
    "ensure_registry",
    "lineage",
    "run_refresh",
    "serving_model",
]


@dataclass
class RefreshOutcome:
    version: str
    passed: bool
    gate: GateReport
    model: RegisteredModel
    timings_s: dict[str, float] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return self.gate.reasons


class Refresher(Protocol):
    """Runs one refresh (dataset, training, gate, registration) with this recipe: in the
    loop's process by default, or as Ray work on a ``trainer`` node
    (``distillery._trainer``)."""

    def __call__(self, recipe: DistillConfig) -> RefreshOutcome: ...


def ensure_registry(registry: ModelRegistry, serving_dir: Path) -> RegisteredModel:
    """The registry's current version; the first time, the serving student becomes it.

    Raises ``RegistryMismatch`` when the current version does not descend from the
    serving student (another preset's registry, or a student since rebuilt): serving it
    would answer with the wrong model and retrain it on this configuration's traffic."""
    current = registry.current()
    if current is not None:
        check_lineage(registry, current, serving_dir)
        return current
    version = read_model_version(serving_dir)
    try:
        model = registry.get(version)
    except ModelNotFound:
        model = registry.register(serving_dir, version, {"parent": None, "source": "initial"})
    registry.promote(model.version, reason="initial version", actor="bootstrap")
    return model


def serving_model(registry: ModelRegistry, serving_dir: Path) -> RegisteredModel:
    """What serves, without writing anything: the registry's current version (checked as
    ``ensure_registry`` checks it), else the configured student itself, unregistered
    (read-only commands: ``distillery drift check``, ``models list``)."""
    current = registry.current()
    if current is not None:
        check_lineage(registry, current, serving_dir)
        return current
    version = read_model_version(serving_dir)
    return RegisteredModel(version, serving_dir, {"parent": None, "source": "initial"})


def lineage(registry: ModelRegistry, version: str) -> list[str]:
    """``version`` and its registered ancestors, newest first (stops at a version the
    registry does not hold, or at a cycle)."""
    out: list[str] = []
    step: str | None = version
    while step and step not in out:
        out.append(step)
        try:
            step = registry.get(step).manifest.get("parent")
        except ModelNotFound:
            break
    return out


def check_lineage(registry: ModelRegistry, current: RegisteredModel, serving_dir: Path) -> None:
    if not serving_dir.is_dir():  # nothing configured to compare with (a registry-only replica)
        return
    serving = read_model_version(serving_dir)
    line = lineage(registry, current.version)
    if serving in line:
        return
    raise RegistryMismatch(
        f"the registry at {registry.root} serves {current.version}, which descends from "
        f"{line[-1]}, not from this configuration's student {serving} ({serving_dir}): it "
        "belongs to another preset or configuration, or to a student since rebuilt. Give "
        "this configuration its own state directory (var_dir, DISTILLERY_VAR_DIR) or "
        f"registry_dir, or move {registry.root} aside to start a registry from {serving}."
    )


def run_refresh(
    store: FeedbackStore,
    registry: ModelRegistry,
    *,
    workdir: Path,
    suite: Sequence[Pair] | None,
    distill_config: DistillConfig,
    gate_config: GateConfig,
    teacher_version: str | None = None,
    since: float | None = None,
    scorer: str = "mean_logprob",
    progress: Callable[[int, int, float], None] | None = None,
    teacher_dir: Path | None = None,
    agreement: AgreementMetric | None = None,
    backend_factory: BackendFactory = transformers_factory,
    second_teacher: SecondOpinion | None = None,
) -> RefreshOutcome:
    """``suite`` None: ``build_suite`` (the config's file, else the serving student's suite
    plus held-out teacher answers per route from the store). ``second_teacher`` None:
    ``distill_config.second_teacher``'s backend, if one is configured."""
    current = registry.current()
    if current is None:
        raise RuntimeError("the registry has no current version; call ensure_registry first")
    agree = agreement or AgreementMetric()
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    if second_teacher is None and distill_config.second_teacher is not None:
        parent = ModelManifest.load(current.path)
        second_teacher = backend_opinion(
            distill_config.second_teacher,
            max_tokens=(parent.max_new_tokens if parent else None) or 32,
            default_dir=current.path,
        )
    served: list[Pair] = []
    if distill_config.replay_served > 0:
        samples = store.events(
            kind="sample",
            split="train",
            holdout_fraction=distill_config.holdout_fraction,
            student_version=current.version,
        )
        served = served_pairs(samples, current.version)
    dataset = build_dataset(
        store,
        load_reference(current.path),
        distill_config,
        since=since,
        second_teacher=second_teacher,
        agreement=agree,
        served=served,
    )
    if suite is None:
        suite = build_suite(
            gate_config, current.path, store, holdout_fraction=distill_config.holdout_fraction
        )
    timings["dataset"] = time.monotonic() - t0
    version = f"student-{time.strftime('%Y%m%d-%H%M%S')}-{dataset.sha256[:6]}"
    candidate_dir = workdir / version
    t0 = time.monotonic()
    trained = distill(
        current.path, dataset, candidate_dir, distill_config, progress=progress, teacher_dir=teacher_dir
    )
    timings["train"] = time.monotonic() - t0
    # What the candidate was trained on is its drift reference and its replay pool: the
    # parent's, plus this refresh's new rows. A copy of the parent's alone made the loop
    # see the routes it had just learned as drift on every tick after a promotion (and
    # refresh again, seed 1 of loop robustness), and left them out of the next replay.
    reference = {p.key: p for p in load_reference(current.path)}
    reference.update((p.key, p) for p in dataset.train if not p.source.startswith("replay"))
    save_pairs(list(reference.values()), candidate_dir / REFERENCE_FILE)
    # The candidate names itself from here on (the gate's report, the engines that load it).
    manifest = ModelManifest.load(candidate_dir) or ModelManifest(version=version)
    manifest.version, manifest.parent = version, current.version
    manifest.source = ModelSource(kind="distilled", path=str(current.path), detail={"steps": trained.steps})
    manifest.label_sources, manifest.label_rejections = dataset.by_source, dataset.rejected
    manifest.save(candidate_dir)
    t0 = time.monotonic()
    report = run_gate(
        current.path,
        candidate_dir,
        dataset.holdout,
        suite,
        gate_config,
        scorer=scorer,
        agreement=agree,
        backend_factory=backend_factory,
    )
    timings["gate"] = time.monotonic() - t0
    (candidate_dir / "gate_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    recalibration(
        report,
        gate_config,
        scorer=scorer,
        agreement=agree.name,
        n=len(dataset.holdout) + len(suite),
        source="gate recalibration (holdout + regression suite)",
    ).save(candidate_dir)
    ds_info = {
        "sha256": dataset.sha256,
        "size": len(dataset.train),
        "new": dataset.new_examples,
        "replay": dataset.replay_examples,
        "holdout": len(dataset.holdout),
        "by_skill": dataset.by_skill,
        "new_by_skill": dataset.new_by_skill,
        "by_source": dataset.by_source,
        "rejected": dataset.rejected,
    }
    t0 = time.monotonic()
    model = registry.register(
        candidate_dir,
        version,
        {
            "parent": current.version,
            "dataset": ds_info,
            "teacher": teacher_version,
            "training": {
                **distill_config.resolved(current.path).model_dump(mode="json"),
                "seconds": trained.seconds,
                "steps": trained.steps,
            },
            "gate": report.to_dict(),
        },
    )
    timings["register"] = time.monotonic() - t0
    return RefreshOutcome(
        version, report.passed, report, model, {k: round(v, 2) for k, v in timings.items()}, ds_info
    )
