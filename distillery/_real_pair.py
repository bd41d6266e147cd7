"""The real preset's models: SmolLM2-135M-Instruct imported as the teacher, a student cut
from its layers and bootstrapped on teacher-labelled seeds of the workload, calibrated.

Everything is cached in the models directory: the import is skipped when the teacher's
manifest names the same GGUF digest, the student when its manifest names the same build
key (teacher version, layers, seed count, bootstrap config, workload), so ``distillery
run --preset smollm2`` builds once (~9 minutes on 2 cores) and then starts in seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from common.model_dir import CALIBRATION_FILE, CalibrationRecord, ModelManifest, read_model_version
from distillery._workloads import workload_for
from distillery.settings import DistillerySettings
from retrain import Pair, load_pairs
from retrain._derive import bootstrap_student, derive_student, label_with_teacher
from router import AgreementMetric, build_backend

__all__ = ["BUILD_REPORT", "RealPairReport", "build_student", "ensure_real_pair", "import_teacher"]

BUILD_REPORT = "build_report.json"

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int, float | None], None]
"""``(task, done, total, loss)``: the CLI's progress bar (``distillery.cli._common``)."""


@dataclass
class RealPairReport:
    teacher_version: str = ""
    student_version: str = ""
    built: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)
    seeds: int = 0
    dropped_labels: int = 0
    stop_rate_by_route: dict[str, float] = field(default_factory=dict)
    train_examples: int = 0
    suite_examples: int = 0
    final_loss: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_teacher(settings: DistillerySettings, *, force: bool = False) -> ModelManifest:
    from router._model_import import import_model, locate_package_file

    real = settings.real
    source = real.teacher_source or locate_package_file(real.teacher_package)
    return import_model(
        source,
        settings.tier_dir("teacher"),
        role="teacher",
        max_new_tokens=settings.gate.max_new_tokens or workload_for(settings.workload).max_tokens,
        force=force,
    )


HOW_IT_RUNS = {"isolated", "niceness", "omp_wait_policy", "num_threads"}
"""Training fields that change how a run shares the machine, not what it learns: left out
of the build key, so tuning them does not rebuild the student (~10 min)."""


def _recipe(config: BaseModel) -> dict[str, Any]:
    """A training config as the build key sees it: the fields set away from their defaults,
    less ``HOW_IT_RUNS``. A release that adds a field with a default (``retrain.replay_served``
    did) then keeps every student built before it, instead of rebuilding it (~25 min)."""
    return config.model_dump(mode="json", exclude=HOW_IT_RUNS, exclude_defaults=True)


def _build_key(settings: DistillerySettings, layers: int, seed_per_route: int, steps: int | None) -> str:
    blob = json.dumps(
        [
            read_model_version(settings.tier_dir("teacher")),
            layers,
            seed_per_route,
            _recipe(settings.real.bootstrap),
            _recipe(settings.real.refresh),
            steps,
            settings.workload,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _is_current(settings: DistillerySettings, key: str) -> bool:
    manifest = ModelManifest.load(settings.tier_dir("student"))
    return bool(
        manifest is not None
        and manifest.source is not None
        and manifest.source.kind == "bootstrapped"
        and getattr(manifest, "build_key", None) == key
        and (settings.tier_dir("student") / CALIBRATION_FILE).is_file()
    )


def build_student(
    settings: DistillerySettings,
    *,
    layers: int | None = None,
    seed_per_route: int | None = None,
    steps: int | None = None,
    bootstrap: bool = True,
    force: bool = False,
    calibrate: bool = True,
    seeds_file: Path | None = None,
    announce: Callable[[str], None] = logger.info,
    progress: Progress | None = None,
) -> RealPairReport:
    """``distillery student derive``: derive, label seeds with the teacher, bootstrap,
    calibrate (each stage timed). Seeds: ``seeds_file`` (JSONL of ``prompt`` or
    ``messages`` rows, optional ``route``; completions are ignored: the teacher labels
    them), else ``seed_per_route`` requests per old route of the configured workload.

    Minutes of work on CPU: each stage is ``announce``d, and the labelling and the
    bootstrap report their counts to ``progress``, so a slow build looks slow, not hung."""
    real = settings.real
    n_layers = layers or real.student_layers
    per_route = seed_per_route or real.seed_per_route
    key = _build_key(settings, n_layers, per_route, steps)
    report = RealPairReport(teacher_version=read_model_version(settings.tier_dir("teacher")))
    if not force and _is_current(settings, key):
        report.student_version = read_model_version(settings.tier_dir("student"))
        stale = _calibrated_under(settings)
        if calibrate and stale != AgreementMetric(settings.agreement).name:
            announce(
                f"student: calibrated judging answers by {stale}, configured "
                f"{AgreementMetric(settings.agreement).name}: recalibrating its threshold"
            )
            _calibrate(settings, report, announce)
        return report
    teacher_dir, student_dir = settings.tier_dir("teacher"), settings.tier_dir("student")
    t0 = time.monotonic()
    announce(f"student: keeping {n_layers} of the teacher's layers ({teacher_dir} -> {student_dir})")
    derived = derive_student(teacher_dir, student_dir, num_layers=n_layers)
    report.timings_s["derive"] = round(time.monotonic() - t0, 1)
    report.built = True
    if bootstrap:
        workload = workload_for(settings.workload)
        if seeds_file is not None:
            seeds = load_pairs(seeds_file, "seed")
        else:
            n_seeds = per_route * len(workload.old_routes)
            seeds = [it.pair for it in workload.sample(workload.old_routes, n_seeds, random.Random(1))]
        budget = derived.max_new_tokens or workload.max_tokens
        t0 = time.monotonic()
        announce(f"student: the teacher labels {len(seeds)} seed requests ({settings.teacher.kind} engine)")
        on_batch = (lambda done, total: progress("labelling seeds", done, total, None)) if progress else None
        labelled, dropped, stops = asyncio.run(_label(settings, seeds, budget, on_batch))
        report.timings_s["label"] = round(time.monotonic() - t0, 1)
        report.seeds, report.dropped_labels, report.stop_rate_by_route = len(seeds), dropped, stops
        config = real.bootstrap.model_copy(update={"steps": steps} if steps else {})
        t0 = time.monotonic()
        announce(f"student: bootstrap on {len(labelled)} seeds ({dropped} dropped), {config.steps} steps")
        result = bootstrap_student(
            student_dir,
            labelled,
            config,
            training_defaults=real.refresh,
            teacher_dir=teacher_dir,
            progress=(lambda step, total, loss: progress("student bootstrap", step, total, loss))
            if progress
            else None,
        )
        report.timings_s["bootstrap"] = round(time.monotonic() - t0, 1)
        report.train_examples, report.suite_examples = result.train_examples, result.suite_examples
        report.final_loss = result.train.final_loss
    manifest = ModelManifest.load(student_dir)
    assert manifest is not None
    manifest.build_key = key  # type: ignore[attr-defined]  # extra field (extra="allow")
    manifest.save(student_dir)
    report.student_version = manifest.version
    if calibrate and bootstrap:
        _calibrate(settings, report, announce)
    return report


def _calibrated_under(settings: DistillerySettings) -> str | None:
    """The agreement metric the built student's threshold was calibrated with: a threshold
    picked to reach a target agreement means something only under the metric that judged
    it, so changing ``agreement`` in the config recalibrates (minutes) instead of
    rebuilding (the build key leaves the metric out) or serving a stale bar."""
    record = CalibrationRecord.load(settings.tier_dir("student"))
    return record.agreement_metric if record is not None else None


def _calibrate(settings: DistillerySettings, report: RealPairReport, announce: Callable[[str], None]) -> None:
    from distillery._calibrate import run_calibration

    t0 = time.monotonic()
    n_cal = settings.gate.suite_per_route * len(workload_for(settings.workload).routes)
    announce(f"student: calibrating the escalation threshold on {n_cal} labelled requests")
    cal = run_calibration(settings, n=n_cal)
    report.timings_s["calibrate"] = round(time.monotonic() - t0, 1)
    report.calibration = {
        "threshold": cal.threshold,
        "escalation_rate": cal.escalation_rate,
        "agreement": cal.agreement,
        "student_agreement": cal.student_agreement,
        "auroc": cal.auroc,
    }


async def _label(
    settings: DistillerySettings,
    seeds: list[Pair],
    budget: int,
    on_batch: Callable[[int, int], None] | None,
) -> tuple[list[Pair], int, dict[str, float]]:
    teacher = build_backend(settings.teacher, default_dir=settings.tier_dir("teacher"), model_id="teacher")
    try:
        labelled, dropped = await label_with_teacher(teacher, seeds, max_tokens=budget, on_batch=on_batch)
    finally:
        await teacher.close()
    kept: dict[str, int] = {}
    total: dict[str, int] = {}
    for p in seeds:
        total[p.skill or ""] = total.get(p.skill or "", 0) + 1
    for p in labelled:
        kept[p.skill or ""] = kept.get(p.skill or "", 0) + 1
    return labelled, dropped, {r: round(kept.get(r, 0) / n, 3) for r, n in total.items()}


def ensure_real_pair(
    settings: DistillerySettings,
    *,
    force: bool = False,
    announce: Callable[[str], None] = logger.info,
    progress: Progress | None = None,
) -> RealPairReport:
    """Teacher imported and student built (each only if missing or stale)."""
    t0 = time.monotonic()
    teacher = import_teacher(settings, force=force)
    import_s = round(time.monotonic() - t0, 1)
    report = build_student(settings, force=force, announce=announce, progress=progress)
    report.teacher_version = teacher.version
    report.timings_s = {"import": import_s, **report.timings_s}
    if report.built:  # kept beside the student: later runs (and the benchmarks) quote it
        path = settings.tier_dir("student") / BUILD_REPORT
        path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report
