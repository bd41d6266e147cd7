"""Replay from the answers the serving student served: its own ``sample`` events, labelled
with its answer, fill up to ``replay_served`` of the replayed rows; other versions' samples,
escalations and prompts already taught or held out never do, and none of them enters the
candidate's reference pool."""

from __future__ import annotations

from typing import Any

from feedback import EscalationEvent
from feedback.schema import EventKind
from retrain import Pair
from retrain._dataset import build_dataset
from retrain._replay import served_pairs
from retrain.config import DistillConfig

REFERENCE = [Pair(f"order {i}?", f"The order number is {i}.", "order_number", "replay") for i in range(40)]


def _event(i: int, kind: EventKind, prompt: str, route: str, **fields: Any) -> EscalationEvent:
    return EscalationEvent(
        request_id=f"r{i}",
        kind=kind,
        prompt=prompt,
        skill=route,
        created_at=float(i),
        **fields,
    )


def test_served_pairs_are_the_versions_own_answers_one_per_prompt() -> None:
    events = [
        _event(
            1,
            "sample",
            "order 77?",
            "order_number",
            student_answer="The order number is 7.",
            student_version="v1",
        ),
        _event(
            2,
            "sample",
            "order 77?",
            "order_number",
            student_answer="The order number is 77.",
            student_version="v1",
        ),
        _event(
            3, "sample", "order 78?", "order_number", student_answer="The order is 78.", student_version="v0"
        ),
        _event(
            4,
            "escalation",
            "cat?",
            "plural",
            student_answer="cat",
            teacher_answer="cats",
            student_version="v1",
        ),
        _event(5, "sample", "order 79?", "order_number", student_answer="  ", student_version="v1"),
    ]

    pairs = served_pairs(events, "v1")

    assert pairs == [Pair("order 77?", "The order number is 77.", "order_number", "replay_served")]


class _Store:
    """The two queries build_dataset makes: the escalations of a new route, no ratings."""

    def __init__(self, events: list[EscalationEvent]) -> None:
        self._events = events

    def events(self, *, kind: str, split: str, **_: object) -> list[EscalationEvent]:
        return [e for e in self._events if e.kind == kind] if split == "train" else []

    def ratings(self, **_: object) -> list[EscalationEvent]:
        return []


def _escalations(n: int) -> list[EscalationEvent]:
    return [
        _event(
            i, "escalation", f"plural of cat{i}?", "plural", teacher_answer=f"cat{i}s", student_version="v1"
        )
        for i in range(n)
    ]


def test_served_answers_fill_their_share_of_the_replay_and_the_reference_the_rest() -> None:
    served = [
        Pair(f"order {100 + i}?", f"The order number is {100 + i}.", "order_number", "replay_served")
        for i in range(50)
    ]
    config = DistillConfig(min_new_examples=1, replay_share=0.5, replay_served=0.5, holdout_fraction=0.01)

    dataset = build_dataset(_Store(_escalations(20)), REFERENCE, config, served=served)  # type: ignore[arg-type]

    assert dataset.new_examples == 20 and dataset.replay_examples == 20
    assert dataset.by_source == {"replay": 10, "replay_served": 10, "teacher": 20}
    served_rows = [p for p in dataset.train if p.source == "replay_served"]
    assert len({p.key for p in served_rows}) == 10, "each served prompt at most once"


def test_fewer_served_answers_than_the_share_leave_the_rest_to_the_reference() -> None:
    served = [Pair("order 500?", "The order number is 500.", "order_number", "replay_served")]
    config = DistillConfig(min_new_examples=1, replay_share=0.5, replay_served=0.8, holdout_fraction=0.01)

    dataset = build_dataset(_Store(_escalations(10)), REFERENCE, config, served=served)  # type: ignore[arg-type]

    assert dataset.by_source == {"replay": 9, "replay_served": 1, "teacher": 10}


def test_a_served_prompt_that_is_also_taught_is_not_replayed() -> None:
    taught = Pair("plural of cat3?", "cat3", "plural", "replay_served")
    config = DistillConfig(min_new_examples=1, replay_share=0.5, replay_served=1.0, holdout_fraction=0.01)

    dataset = build_dataset(_Store(_escalations(4)), [], config, served=[taught])  # type: ignore[arg-type]

    assert dataset.by_source == {"teacher": 4}
    assert [p.completion for p in dataset.train if p.prompt == "plural of cat3?"] == ["cat3s"]


def test_no_share_replays_the_reference_only() -> None:
    served = [Pair("order 500?", "The order number is 500.", "order_number", "replay_served")]
    config = DistillConfig(min_new_examples=1, replay_share=0.5, holdout_fraction=0.01)

    dataset = build_dataset(_Store(_escalations(10)), REFERENCE, config, served=served)  # type: ignore[arg-type]

    assert dataset.by_source == {"replay": 10, "teacher": 10}
