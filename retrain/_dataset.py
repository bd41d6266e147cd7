"""Builds a distillation dataset from the feedback store.

Teacher answers to escalated prompts are the new signal; the student's own training data
is replayed beside them so old skills are not forgotten. Deduplicated by prompt (the
latest teacher answer wins), rows without a usable teacher answer are dropped, and the
train/holdout split is the store's stable hash of the request id: the holdout is never
trained on, whichever machine builds the set.

Chat fidelity: a chat escalation is kept whole (system prompt, earlier turns, the last
user turn), never reduced to its last user message, so the trainer renders it with the
student's own chat template exactly as serving does (``Pair.to_request`` is the request
the backend would have been given). "The same prompt" means the same whole conversation.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.model_dir import REFERENCE_FILE
from feedback import EscalationEvent, FeedbackStore
from retrain.config import DistillConfig
from retrain.errors import NotEnoughFeedback
from router import ChatTurn, GenerationRequest

__all__ = [
    "REFERENCE_FILE",
    "DistillDataset",
    "Pair",
    "build_dataset",
    "load_pairs",
    "load_reference",
    "save_pairs",
]

Turns = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Pair:
    """A request and the answer it should get.

    ``prompt`` is the raw prompt, or for chat the last user turn (what drift checks and
    route labels read); ``messages`` is the whole conversation for chat requests, as
    (role, content) pairs."""

    prompt: str
    completion: str
    skill: str | None = None
    source: str = "teacher"
    messages: Turns | None = None

    @property
    def key(self) -> str:
        """What "the same prompt" means: the whole conversation for chat."""
        if self.messages is None:
            return self.prompt
        return json.dumps(self.messages, ensure_ascii=False)

    def to_request(self, max_tokens: int) -> GenerationRequest:
        if self.messages is None:
            return GenerationRequest(prompt=self.prompt, max_tokens=max_tokens)
        turns = tuple(ChatTurn(role=r, content=c) for r, c in self.messages)  # type: ignore[arg-type]
        return GenerationRequest(messages=turns, max_tokens=max_tokens)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt, "completion": self.completion, "skill": self.skill}
        if self.messages is not None:
            row["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any], source: str) -> Pair:
        messages = row.get("messages")
        turns: Turns | None = None
        if messages:
            turns = tuple((str(m["role"]), str(m["content"])) for m in messages)
        prompt = row.get("prompt")
        if prompt is None and turns is not None:
            prompt = next((c for r, c in reversed(turns) if r == "user"), "")
        return cls(
            str(prompt or ""), str(row["completion"]), row.get("skill") or row.get("route"), source, turns
        )

    @classmethod
    def from_event(cls, event: EscalationEvent, answer: str) -> Pair:
        turns = None if event.messages is None else tuple((m.role, m.content) for m in event.messages)
        return cls(event.prompt_text(), answer, event.skill, "teacher", turns)


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
        blob = json.dumps([[p.key, p.completion] for p in self.train], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def load_pairs(path: Path, source: str) -> list[Pair]:
    """JSONL rows of ``prompt`` or ``messages``, ``completion`` and optional ``skill``/``route``."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Pair.from_row(r, source) for r in rows]


def save_pairs(pairs: Sequence[Pair], path: Path) -> None:
    path.write_text("".join(json.dumps(p.to_row(), ensure_ascii=False) + "\n" for p in pairs))


def load_reference(model_dir: Path) -> list[Pair]:
    """The student's training sample (``train_reference.jsonl``, written by whoever built it)."""
    return load_pairs(model_dir / REFERENCE_FILE, "replay")


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
            if not event.prompt_text().strip() or not _usable(event.teacher_answer):
                dropped += 1
                continue
            assert event.teacher_answer is not None
            pair = Pair.from_event(event, event.teacher_answer.strip())
            target[pair.key] = pair  # latest wins
    for key in list(latest):
        if key in holdout:  # the same prompt in both: keep it out of training
            del latest[key]
    # Sorted, so the set does not depend on the order concurrent requests were stored in.
    new = sorted(latest.values(), key=lambda p: p.key)
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
