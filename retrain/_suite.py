"""The fixed regression suite: every skill of the demo domain, ground-truth labels.

Fixed seed, so every gate run judges candidates on the same prompts. A deployment with
its own domain passes its own suite (a JSONL of prompt/completion/skill) instead.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from demo import ALL_SKILLS, sample_examples
from retrain._dataset import Pair

__all__ = ["demo_regression_suite", "load_suite"]


def demo_regression_suite(per_skill: int = 100, seed: int = 31_337) -> list[Pair]:
    skills = [s.name for s in ALL_SKILLS]
    examples = sample_examples(skills, per_skill * len(skills), random.Random(seed))
    return [Pair(e.prompt, e.answer, e.skill, "suite") for e in examples]


def load_suite(path: Path) -> list[Pair]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Pair(r["prompt"], r["completion"], r.get("skill"), "suite") for r in rows]
