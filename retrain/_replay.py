"""Replay from the answers the serving student gave the traffic it serves.

Replay keeps old routes from being forgotten; what it replays decides how much it protects.
The reference pool is the student's own training set, and a student has memorised it: the
real pair's student reproduces all 358 of its reference rows word for word (measured with
its own greedy answers), so those rows carry almost no loss and hold little of the
student's behaviour on *unseen* prompts of the same routes. That behaviour is what
regressed on the real pair (loop robustness, seed 1: order_number escalating 7.5% -> 22.6%
on the gate's suite after a refresh for two new routes, refused).

The store already keeps a share of the answers the student served (``sample`` events,
``feedback.sample_rate``): confident answers to live prompts, above the calibrated
threshold. Replaying them, labelled with the student's own answer, is self-distillation on
the served distribution, the "keep the candidate close to the serving model's predictions
on old tasks" of Learning without Forgetting (Li & Hoiem) and of the production-model
distillation the issue's seeds describe, done on labels rather than with a second model in
the training loop.
"""

from __future__ import annotations

from collections.abc import Iterable

from feedback import EscalationEvent
from retrain._dataset import Pair

__all__ = ["served_pairs"]


def served_pairs(events: Iterable[EscalationEvent], student_version: str | None) -> list[Pair]:
    """The ``sample`` events ``student_version`` served, one pair per prompt (the latest
    answer), labelled with the student's own answer and sourced ``replay_served``.

    A structured answer is kept only if it keeps its contract (``Pair.under_contract``);
    an event of another version, or without a prompt or an answer, is skipped."""
    latest: dict[str, tuple[float, Pair]] = {}
    for event in events:
        answer = (event.student_answer or "").strip()
        if event.kind != "sample" or event.student_version != student_version or not answer:
            continue
        if not event.prompt_text().strip():
            continue
        pair, _ = Pair.from_event(event, answer, "replay_served").under_contract()
        if pair is None:
            continue
        held = latest.get(pair.key)
        if held is None or event.created_at >= held[0]:
            latest[pair.key] = (event.created_at, pair)
    return [pair for _, pair in sorted(latest.values(), key=lambda item: (item[0], item[1].key))]
