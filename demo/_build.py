"""``distillery demo build``: the teacher and student specs, idempotent building, the table."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from common.model_dir import REFERENCE_FILE, SUITE_FILE
from demo._builder import MANIFEST_NAME, ModelSpec, TrainReport, evaluate_exact_match, train_model
from demo._domain import ALL_SKILLS, STUDENT_SKILLS, sample_examples

__all__ = [
    "STUDENT_SKILLS",
    "STUDENT_SPEC",
    "TEACHER_SPEC",
    "BuildResult",
    "build_demo_models",
    "final_accuracy",
    "is_built",
]


# Shapes and budgets measured on 2 CPU cores (see docs/architecture.md): the teacher
# clears 99% on all four skills in ~110 s, the student 99% on its two in ~20 s.
TEACHER_SPEC = ModelSpec(
    name="teacher",
    skills=tuple(s.name for s in ALL_SKILLS),
    hidden_size=192,
    num_layers=2,
    num_heads=6,
    intermediate_size=384,
    steps=2000,
    target_accuracy=0.995,
    seed=1,
)
STUDENT_SPEC = ModelSpec(
    name="student",
    skills=STUDENT_SKILLS,
    hidden_size=128,
    num_layers=2,
    num_heads=4,
    intermediate_size=256,
    steps=900,
    target_accuracy=0.99,
    seed=2,
)

FINAL_EVAL_PER_SKILL = 300
REFERENCE_SIZE = 3000
SUITE_PER_SKILL = 100
SUITE_SEED = 31_337
# How the retrainer should train these from-scratch toys (the manifest tells it; a
# pretrained model's directory says something far gentler).
TOY_TRAINING = {"steps": 600, "batch_size": 64, "learning_rate": 1e-3, "warmup_steps": 20}
TOY_MAX_NEW_TOKENS = 24


def regression_rows(per_skill: int = SUITE_PER_SKILL, seed: int = SUITE_SEED) -> list[dict[str, str]]:
    """Every skill, ground-truth labels, fixed seed: the same prompts for every gate run."""
    skills = [s.name for s in ALL_SKILLS]
    examples = sample_examples(skills, per_skill * len(skills), random.Random(seed))
    return [{"prompt": e.prompt, "completion": e.answer, "skill": e.skill} for e in examples]


def write_suite(path: Path) -> None:
    rows = [json.dumps(r) for r in regression_rows()]
    (path / SUITE_FILE).write_text("\n".join(rows) + "\n")


def _complete_manifest(path: Path) -> None:
    """Files and manifest entries added after a directory was built (no retraining)."""
    if not (path / REFERENCE_FILE).is_file() and path.name in ("teacher", "student"):
        write_reference(TEACHER_SPEC if path.name == "teacher" else STUDENT_SPEC, path)
    if path.name == "student" and not (path / SUITE_FILE).is_file():
        write_suite(path)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    wanted = {"training": TOY_TRAINING, "max_new_tokens": TOY_MAX_NEW_TOKENS, "role": path.name}
    if any(manifest.get(k) != v for k, v in wanted.items()):
        manifest.update(wanted)
        manifest.setdefault("source", {"kind": "demo"})
        (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def write_reference(spec: ModelSpec, path: Path) -> None:
    """A sample of what the model was trained on: the retrainer replays it so old skills
    are not forgotten, and drift checks compare live traffic with it."""
    rng = random.Random(50_000 + spec.seed)
    rows = [
        json.dumps({"prompt": e.prompt, "completion": e.answer, "skill": e.skill})
        for e in sample_examples(spec.skills, REFERENCE_SIZE, rng)
    ]
    (path / REFERENCE_FILE).write_text("\n".join(rows) + "\n")


@dataclass(frozen=True)
class BuildResult:
    name: str
    path: Path
    built: bool
    seconds: float
    accuracy: dict[str, float]


def is_built(spec: ModelSpec, path: Path) -> bool:
    manifest = path / MANIFEST_NAME
    if not (manifest.is_file() and (path / "model.safetensors").is_file()):
        return False
    return bool(json.loads(manifest.read_text()).get("spec_hash") == spec.config_hash())


def final_accuracy(path: Path, skills: tuple[str, ...], seed: int = 424242) -> dict[str, float]:
    """Exact match on a fresh sample over *every* skill (so the table shows the gap)."""
    tok = AutoTokenizer.from_pretrained(str(path))
    model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    examples = sample_examples(skills, FINAL_EVAL_PER_SKILL * len(skills), random.Random(seed))
    return evaluate_exact_match(model, tok, examples)


def build_demo_models(
    models_dir: Path,
    *,
    force: bool = False,
    scale: float = 1.0,
    progress: Callable[[str, int, int, float], None] | None = None,
) -> list[BuildResult]:
    """Builds whichever of teacher/student is missing or stale. ``scale`` shrinks the
    step budget (tests use it to exercise the builder quickly; accuracy then drops)."""
    torch.set_num_threads(2)  # fixed, so a given seed gives the same weights everywhere
    results = []
    all_skills = tuple(s.name for s in ALL_SKILLS)
    for spec in (TEACHER_SPEC, STUDENT_SPEC):
        if scale != 1.0:
            spec = replace(
                spec, steps=max(2, int(spec.steps * scale)), eval_every=max(1, int(spec.eval_every * scale))
            )
        path = models_dir / spec.name
        if not force and is_built(spec, path):
            _complete_manifest(path)
            manifest = json.loads((path / MANIFEST_NAME).read_text())
            results.append(BuildResult(spec.name, path, False, 0.0, manifest.get("final_accuracy", {})))
            continue
        name = spec.name
        step_cb = None if progress is None else functools.partial(progress, name)
        report: TrainReport = train_model(spec, path, step_cb)
        accuracy = final_accuracy(path, all_skills)
        write_reference(spec, path)
        manifest = json.loads((path / MANIFEST_NAME).read_text())
        manifest.update({"spec_hash": spec.config_hash(), "final_accuracy": accuracy})
        (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        _complete_manifest(path)
        results.append(BuildResult(name, path, True, report.seconds, accuracy))
    return results
