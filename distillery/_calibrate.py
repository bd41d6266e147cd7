"""``distillery calibrate``: pick the cascade threshold on a labelled sample.

The sample is the configured workload's requests over every route (or a JSONL file of
``prompt`` or ``messages`` rows); the label is whether the student's answer agrees with
the teacher's under the configured agreement metric. Both tiers answer through the
engines that serve them (the serving factory) with the student directory's answer
budget. The chosen point is written to the student's ``calibration.json``, which the
serving cascade reads: a threshold belongs to one model version, so it must be redone
after every model update.

A file's rows may be structured requests (``response_format``, tools: ``retrain.Pair``'s
row format): their answers agree structurally (the same parsed JSON; the same calls), and
each structured kind with at least ``gate.min_kind_calibration`` rows gets its own
threshold (``by_kind``), as the gate recalibrates it.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.model_dir import CALIBRATION_FILE, CalibrationRecord
from distillery._workloads import WorkItem, workload_for
from distillery.settings import DistillerySettings
from retrain import Pair, load_pairs
from retrain._gate import CommitChoice, answer_budget, commit_points, kind_thresholds
from router import (
    SCORER_NAMES,
    AgreementMetric,
    CalibrationPoint,
    all_scores,
    answer_agrees,
    auroc,
    build_backend,
    calibration_curve,
    confidence_logprobs,
    generate_requests,
    pick_threshold,
)

__all__ = ["CalibrationReport", "run_calibration", "sample_items"]


@dataclass(frozen=True)
class CalibrationReport:
    scorer: str
    threshold: float
    target: dict[str, float]
    n: int
    escalation_rate: float
    agreement: float
    agreement_metric: str
    student_agreement: float
    teacher_accuracy: float | None
    auroc: dict[str, float | None]
    curve: list[CalibrationPoint]
    path: Path | None
    by_kind: dict[str, float] = field(default_factory=dict)
    """Thresholds of the structured output kinds with enough rows."""
    commit: dict[str, CommitChoice] = field(default_factory=dict)
    """Where a streamed answer of each kind is decided (``router._early``), and why."""


def sample_items(
    settings: DistillerySettings, n: int, seed: int, prompts_file: Path | None
) -> list[WorkItem]:
    if prompts_file is not None:
        rows: list[Pair] = load_pairs(prompts_file, "calibration")
        return [WorkItem(p.skill or "unlabelled", p) for p in rows[:n]]
    workload = workload_for(settings.workload)
    return workload.sample(workload.routes, n, random.Random(seed))


def run_calibration(
    settings: DistillerySettings,
    *,
    n: int = 400,
    target_agreement: float | None = None,
    target_escalation_rate: float | None = None,
    seed: int = 7,
    prompts_file: Path | None = None,
    write: bool = True,
    max_tokens: int | None = None,
    batch_size: int = 32,
) -> CalibrationReport:
    if target_agreement is None and target_escalation_rate is None:
        target_agreement = settings.gate.target_agreement
    student_dir = settings.tier_dir("student")
    teacher_dir = settings.tier_dir("teacher")
    items = sample_items(settings, n, seed, prompts_file)
    budget = answer_budget(student_dir, max_tokens or settings.gate.max_new_tokens)
    requests = [item.pair.to_request(budget) for item in items]

    async def both() -> tuple[list[Any], list[Any], str, str]:
        answers = []
        versions = []
        for tier, directory in (("student", student_dir), ("teacher", teacher_dir)):
            cfg = settings.student if tier == "student" else settings.teacher
            backend = build_backend(cfg, default_dir=directory, model_id=tier)
            try:
                answers.append(await generate_requests(backend, requests, batch_size=batch_size))
                versions.append(backend.version)
            finally:
                await backend.close()
        return answers[0], answers[1], versions[0], versions[1]

    s_gens, t_gens, s_version, t_version = asyncio.run(both())
    agree = AgreementMetric(settings.agreement)
    agrees = [
        answer_agrees(r, s.text, s.finish_reason, t.text, agree)
        for r, s, t in zip(requests, s_gens, t_gens, strict=True)
    ]
    checked = [agree(t.text, item.truth) for t, item in zip(t_gens, items, strict=True) if item.truth]
    scores = [all_scores(confidence_logprobs(g, sampled=False)) for g in s_gens]
    aurocs = {name: auroc([s[name] for s in scores], agrees) for name in SCORER_NAMES}
    scorer = settings.cascade.scorer
    curve = calibration_curve([s[scorer] for s in scores], agrees)
    point = pick_threshold(
        curve, target_agreement=target_agreement, target_escalation_rate=target_escalation_rate
    )
    by_kind = kind_thresholds(
        [r.output_kind for r in requests],
        [s[scorer] for s in scores],
        agrees,
        min_answers=settings.gate.min_kind_calibration,
        target_agreement=target_agreement,
        target_escalation_rate=target_escalation_rate,
    )
    target = (
        {"agreement": target_agreement}
        if target_agreement is not None
        else {"escalation_rate": float(target_escalation_rate or 0.0)}
    )
    commit = commit_points(
        requests,
        s_gens,
        agrees,
        threshold=point.threshold,
        scorer=scorer,
        escalation_budget=settings.gate.commit_escalation_budget,
    )
    path = student_dir / CALIBRATION_FILE if write else None
    report = CalibrationReport(
        scorer=scorer,
        threshold=point.threshold,
        target=target,
        n=len(items),
        escalation_rate=point.escalation_rate,
        agreement=point.agreement,
        agreement_metric=agree.name,
        student_agreement=sum(agrees) / len(agrees),
        teacher_accuracy=(sum(checked) / len(checked)) if checked else None,
        auroc=aurocs,
        curve=curve,
        path=path,
        by_kind=by_kind,
        commit=commit,
    )
    if write:
        CalibrationRecord(
            scorer=scorer,
            threshold=point.threshold,
            by_kind=by_kind,
            commit={kind: c.record for kind, c in commit.items() if c.record is not None},
            target=target,
            escalation_rate=point.escalation_rate,
            agreement=point.agreement,
            agreement_metric=agree.name,
            n=len(items),
            source=f"distillery calibrate ({'file' if prompts_file else settings.workload} sample)",
            student_version=s_version,
            teacher_version=t_version,
            student_agreement=report.student_agreement,
            teacher_accuracy=report.teacher_accuracy,
            auroc=aurocs,
            curve=[asdict(p) for p in curve],
        ).save(student_dir)
    return report
