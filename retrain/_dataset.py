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

Which answer teaches a prompt (corrections, confirmed teacher answers, plain ones; what
verifiers and a second teacher reject) is ``retrain._labels``'s rule; this module applies
it to what the store holds and counts every label by source and every rejection by reason.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from common.model_dir import REFERENCE_FILE
from feedback import EscalationEvent, FeedbackStore
from retrain._labels import LABEL_PRECEDENCE, SecondOpinion, Verifier, build_verifiers, second_opinions
from retrain.config import DistillConfig
from retrain.errors import NotEnoughFeedback
from router import AgreementMetric, ChatTurn, GenerationRequest

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
    def from_event(cls, event: EscalationEvent, answer: str, source: str = "teacher") -> Pair:
        turns = None if event.messages is None else tuple((m.role, m.content) for m in event.messages)
        return cls(event.prompt_text(), answer, event.skill, source, turns)


@dataclass
class DistillDataset:
    train: list[Pair]
    holdout: list[Pair]
    new_examples: int
    replay_examples: int
    dropped: int
    by_skill: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    """Training examples per label source (correction, teacher_agreed, teacher, audit, replay)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Labels not used, by reason (unusable, rated_bad, verifier:<name>, second_teacher_disagreed)."""

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


@dataclass
class _Labeller:
    """Chooses one label per prompt for one split, counting what it rejects."""

    verifiers: Sequence[Verifier]
    second_teacher: SecondOpinion | None
    agreement: AgreementMetric
    rejected: Counter[str]

    def labels(
        self, events: Sequence[EscalationEvent], ratings: Sequence[EscalationEvent]
    ) -> dict[str, Pair]:
        rated = {r.request_id: r for r in ratings if r.rating is not None}
        found: list[tuple[Pair, float]] = []
        for r in rated.values():
            if r.correction is not None and r.correction.strip() and r.prompt_text().strip():
                found.append((Pair.from_event(r, r.correction.strip(), "correction"), r.created_at))
        found += self._confirmed(self._teacher_labels(events, rated))
        chosen: dict[str, tuple[Pair, tuple[int, float]]] = {}
        for pair, created_at in found:
            rank = (LABEL_PRECEDENCE[pair.source], -created_at)  # the best source, then the latest
            held = chosen.get(pair.key)
            if held is None or rank < held[1]:
                chosen[pair.key] = (pair, rank)
        return {key: pair for key, (pair, _) in chosen.items()}

    def _teacher_labels(
        self, events: Sequence[EscalationEvent], rated: dict[str, EscalationEvent]
    ) -> list[tuple[Pair, float]]:
        out: list[tuple[Pair, float]] = []
        for event in events:
            if not event.prompt_text().strip() or not _usable(event.teacher_answer):
                self.rejected["unusable"] += 1
                continue
            assert event.teacher_answer is not None
            source = "audit" if event.kind == "audit" else "teacher"
            rating = rated.get(event.request_id)
            if rating is not None and rating.tier == "teacher" and rating.rating is not None:
                if rating.rating < 0.5:
                    self.rejected["rated_bad"] += 1
                    continue
                source = "teacher_agreed"
            pair = Pair.from_event(event, event.teacher_answer.strip(), source)
            failed = next(
                (v for v in self.verifiers if v.rejects(pair.completion, pair.prompt, pair.skill)), None
            )
            if failed is not None:
                self.rejected[failed.reason] += 1
                continue
            out.append((pair, event.created_at))
        return out

    def _confirmed(self, labels: list[tuple[Pair, float]]) -> list[tuple[Pair, float]]:
        """With a second teacher: the labels it agrees with, as ``teacher_agreed``."""
        if self.second_teacher is None:
            return labels
        confirmed = [label for label in labels if label[0].source == "teacher_agreed"]
        unconfirmed = [label for label in labels if label[0].source != "teacher_agreed"]
        verdicts = second_opinions(self.second_teacher, [pair for pair, _ in unconfirmed], self.agreement)
        for (pair, created_at), agreed in zip(unconfirmed, verdicts, strict=True):
            if agreed:
                confirmed.append((replace(pair, source="teacher_agreed"), created_at))
            else:
                self.rejected["second_teacher_disagreed"] += 1
        return confirmed


def build_dataset(
    store: FeedbackStore,
    reference: list[Pair],
    config: DistillConfig,
    *,
    since: float | None = None,
    verifiers: Sequence[Verifier] | None = None,
    second_teacher: SecondOpinion | None = None,
    agreement: AgreementMetric | None = None,
) -> DistillDataset:
    """``verifiers`` None builds ``config.verifiers``; ``second_teacher`` confirms (or drops)
    every teacher label not already confirmed, judged by ``agreement``."""
    labeller = _Labeller(
        build_verifiers(config.verifiers) if verifiers is None else verifiers,
        second_teacher,
        agreement or AgreementMetric(),
        Counter(),
    )
    splits: dict[Literal["train", "holdout"], dict[str, Pair]] = {}
    for split in ("train", "holdout"):
        query: dict[str, Any] = {"since": since, "split": split, "holdout_fraction": config.holdout_fraction}
        events = sorted(
            store.events(kind="escalation", **query) + store.events(kind="audit", **query),
            key=lambda e: (e.created_at, e.request_id),
        )
        splits[split] = labeller.labels(events, store.ratings(**query))
    latest, holdout = splits["train"], splits["holdout"]
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
    by_source = dict(sorted(Counter(p.source for p in train).items()))
    rejected = dict(sorted(labeller.rejected.items()))
    return DistillDataset(
        train,
        list(holdout.values()),
        len(new),
        len(replay),
        sum(rejected.values()),
        by_skill,
        by_source,
        rejected,
    )
