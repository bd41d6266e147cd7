"""``distillery calibrate``: pick the cascade threshold on a labelled sample.

The sample is the demo domain's prompts over every skill (or a JSONL file of prompts);
the label is whether the student's answer agrees with the teacher's. The chosen point is
written to the student's ``calibration.json`` (which the serving cascade reads), because
a threshold belongs to one model version: it must be redone after every model update.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from demo import ALL_SKILLS, sample_examples, solve
from demo import parse_prompt as parse_demo_prompt
from gateway._deployments import CALIBRATION_FILE
from gateway.settings import DistillerySettings
from router import (
    SCORER_NAMES,
    CalibrationPoint,
    all_scores,
    auroc,
    build_backend,
    calibration_curve,
    generate_prompts,
    pick_threshold,
)

__all__ = ["CalibrationReport", "run_calibration"]


@dataclass(frozen=True)
class CalibrationReport:
    scorer: str
    threshold: float
    target: dict[str, float]
    n: int
    escalation_rate: float
    agreement: float
    student_agreement: float
    teacher_accuracy: float | None
    auroc: dict[str, float | None]
    curve: list[CalibrationPoint]
    path: Path | None


def _sample_prompts(n: int, seed: int, prompts_file: Path | None) -> list[str]:
    if prompts_file is not None:
        rows = [json.loads(line) for line in prompts_file.read_text().splitlines() if line.strip()]
        return [str(r["prompt"]) for r in rows][:n]
    return [e.prompt for e in sample_examples([s.name for s in ALL_SKILLS], n, random.Random(seed))]


def run_calibration(
    settings: DistillerySettings,
    *,
    n: int = 400,
    target_agreement: float | None = None,
    target_escalation_rate: float | None = None,
    seed: int = 7,
    prompts_file: Path | None = None,
    write: bool = True,
    max_tokens: int = 16,
) -> CalibrationReport:
    if target_agreement is None and target_escalation_rate is None:
        target_agreement = 0.995
    student_dir = settings.tier_dir("student")
    student = build_backend(settings.student, default_dir=student_dir, model_id="student")
    teacher = build_backend(settings.teacher, default_dir=settings.tier_dir("teacher"), model_id="teacher")
    prompts = _sample_prompts(n, seed, prompts_file)

    async def both() -> tuple[list[Any], list[Any]]:
        s = await generate_prompts(student, prompts, max_tokens=max_tokens)
        t = await generate_prompts(teacher, prompts, max_tokens=max_tokens)
        await student.close()
        await teacher.close()
        return s, t

    s_gens, t_gens = asyncio.run(both())
    agrees = [s.text.strip() == t.text.strip() for s, t in zip(s_gens, t_gens, strict=True)]
    truth = [parse_demo_prompt(p) for p in prompts]
    checked = [(t.text.strip() == solve(*x)) for t, x in zip(t_gens, truth, strict=True) if x is not None]
    scores = [all_scores(g.token_logprobs) for g in s_gens]
    aurocs = {name: auroc([s[name] for s in scores], agrees) for name in SCORER_NAMES}
    scorer = settings.cascade.scorer
    curve = calibration_curve([s[scorer] for s in scores], agrees)
    point = pick_threshold(
        curve, target_agreement=target_agreement, target_escalation_rate=target_escalation_rate
    )
    target = (
        {"agreement": target_agreement}
        if target_agreement is not None
        else {"escalation_rate": float(target_escalation_rate or 0.0)}
    )
    path = student_dir / CALIBRATION_FILE if write else None
    report = CalibrationReport(
        scorer=scorer,
        threshold=point.threshold,
        target=target,
        n=len(prompts),
        escalation_rate=point.escalation_rate,
        agreement=point.agreement,
        student_agreement=sum(agrees) / len(agrees),
        teacher_accuracy=(sum(checked) / len(checked)) if checked else None,
        auroc=aurocs,
        curve=curve,
        path=path,
    )
    if path is not None:
        payload = {k: v for k, v in asdict(report).items() if k not in ("path", "curve")}
        payload["curve"] = [asdict(p) for p in curve]
        payload["student_version"] = student.version
        payload["teacher_version"] = teacher.version
        payload["created"] = time.time()
        path.write_text(json.dumps(payload, indent=2))
    return report
