"""The regression suite the gate judges every candidate on.

Where it comes from, first match wins:

1. ``GateConfig.suite_file``: a user's JSONL (``prompt`` or ``messages``, ``completion``,
   optional ``skill``/``route``);
2. otherwise the serving student's own ``regression_suite.jsonl`` (written by whoever
   built it: the demo builder with ground truth, the real preset's bootstrap with held-out
   teacher answers) plus, per route, up to ``suite_per_route`` held-out teacher answers
   from the feedback store (the stable hash split: never trained on), so every route the
   traffic has reached is protected, including ones no builder knew about.

Nothing here knows a domain: the demo's skills reach the gate through the file the demo
builder writes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from common.model_dir import SUITE_FILE
from feedback import FeedbackStore
from retrain._dataset import Pair, load_pairs, save_pairs
from retrain.config import GateConfig

__all__ = ["build_suite", "load_suite", "save_suite"]


def load_suite(path: Path) -> list[Pair]:
    return load_pairs(path, "suite")


def save_suite(pairs: list[Pair], model_dir: Path) -> Path:
    path = model_dir / SUITE_FILE
    save_pairs(pairs, path)
    return path


def build_suite(
    config: GateConfig,
    model_dir: Path,
    store: FeedbackStore | None = None,
    *,
    holdout_fraction: float = 0.1,
) -> list[Pair]:
    if config.suite_file is not None:
        return load_suite(config.suite_file)
    suite = load_suite(model_dir / SUITE_FILE)
    if store is None:
        return suite
    seen = {p.key for p in suite}
    per_route: dict[str | None, int] = {}
    events = store.events(kind="escalation", split="holdout", holdout_fraction=holdout_fraction)
    for event in sorted(events, key=lambda e: e.request_id):  # stable across runs
        answer = event.teacher_label()  # a cut-off answer is no label to judge by
        if not answer or per_route.get(event.skill, 0) >= config.suite_per_route:
            continue
        pair = Pair.from_event(event, answer)
        if pair.key in seen:
            continue
        seen.add(pair.key)
        per_route[event.skill] = per_route.get(event.skill, 0) + 1
        suite.append(replace(pair, source="suite"))  # keeps the contract and tool turns
    return suite
