"""Builds a distillation dataset from the feedback store.

Teacher answers to escalated prompts are the new signal; the student's own training data
is replayed beside them so old skills are not forgotten. Deduplicated by prompt (the
latest teacher answer wins), rows without a usable teacher answer are dropped, and the
train/holdout split is the store's stable hash of the request id: the holdout is never
trained on, whichever machine builds the set.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from feedback import FeedbackStore
from retrain.config import DistillConfig
from retrain.errors import NotEnoughFeedback

__all__ = ["REFERENCE_FILE", "DistillDataset", "Pair", "build_dataset", "load_reference"]

REFERENCE_FILE = "train_reference.jsonl"


@dataclass(frozen=True)
class Pair:
    prompt: str
    completion: str
    skill: str | None = None
    source: str = "teacher"


@dataclass
class DistillDataset:
    train: list[Pair]
    holdout: list[Pair]
    new_examples: int
    replay_examples: int
    dropped: int
    by_skill: dict[str, int] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        blob = json.dumps([[p.prompt, p.completion] for p in self.train], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def load_reference(model_dir: Path) -> list[Pair]:
    """The student's original training sample (written by ``distillery demo build``)."""
    path = model_dir / REFERENCE_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Pair(r["prompt"], r["completion"], r.get("skill"), "replay") for r in rows]


def _usable(answer: str | None) -> bool:
    return bool(answer and answer.strip())


def build_dataset(
    store: FeedbackStore,
    reference: list[Pair],
    config: DistillConfig,
    *,
    since: float | None = None,
) -> DistillDataset:
    latest: dict[str, Pair] = {}
    holdout: dict[str, Pair] = {}
    dropped = 0
    splits: tuple[tuple[Literal["train", "holdout"], dict[str, Pair]], ...] = (
        ("train", latest),
        ("holdout", holdout),
    )
    for split, target in splits:
        for event in store.events(
            since=since, kind="escalation", split=split, holdout_fraction=config.holdout_fraction
        ):
            prompt = event.prompt_text()
            if not prompt.strip() or not _usable(event.teacher_answer):
                dropped += 1
                continue
            assert event.teacher_answer is not None
            target[prompt] = Pair(prompt, event.teacher_answer.strip(), event.skill)  # latest wins
    for prompt in list(latest):
        if prompt in holdout:  # the same prompt in both: keep it out of training
            del latest[prompt]
    # Sorted, so the set does not depend on the order concurrent requests were stored in.
    new = sorted(latest.values(), key=lambda p: p.prompt)
    usable = len(new) + len(holdout)
    if usable < config.min_new_examples:
        raise NotEnoughFeedback(f"{usable} usable escalations (need {config.min_new_examples}) since {since}")
    rng = random.Random(config.seed)
    budget_new = min(len(new), int(config.max_examples * (1 - config.replay_share)))
    new = rng.sample(new, budget_new)
    n_replay = round(len(new) * config.replay_share / (1 - config.replay_share)) if reference else 0
    replay = [rng.choice(reference) for _ in range(n_replay)] if reference else []
    train = new + replay
    rng.shuffle(train)
    by_skill: dict[str, int] = {}
    for p in train:
        key = p.skill or "unlabelled"
        by_skill[key] = by_skill.get(key, 0) + 1
    return DistillDataset(train, list(holdout.values()), len(new), len(replay), dropped, by_skill)
