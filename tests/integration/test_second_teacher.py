"""The second teacher on a real backend: the demo teacher, loaded by the backend factory,
answers the escalated prompts offline; only labels it agrees with are kept."""

from __future__ import annotations

import pytest

from demo import solve
from feedback import EscalationEvent, SQLiteStore
from feedback._store import holdout_bucket
from retrain import DistillConfig, build_dataset
from retrain._labels import backend_opinion
from router import AgreementMetric, BackendConfig

pytestmark = pytest.mark.integration


def test_a_real_second_teacher_drops_the_labels_it_disagrees_with(demo_models, tmp_path):
    store = SQLiteStore(tmp_path / "f.db")
    words = ["kafka", "ray", "serve", "store", "drift", "label"]
    ids = (f"r-{i}" for i in range(10_000) if holdout_bucket(f"r-{i}") >= 100)
    events = []
    for i, word in enumerate(words):
        right = solve("shift", word)
        answer = right if i % 2 == 0 else right[::-1] + "x"  # every other label is wrong
        events.append(
            EscalationEvent(
                request_id=next(ids),
                created_at=float(i),
                prompt=f"shift: {word} =",
                student_answer="?",
                teacher_answer=answer,
                skill="shift",
            )
        )
    store.insert(events)
    second = backend_opinion(
        BackendConfig(kind="transformers", num_threads=1), max_tokens=16, default_dir=demo_models / "teacher"
    )
    config = DistillConfig(min_new_examples=1, holdout_fraction=0.01, replay_share=0.0)
    ds = build_dataset(store, [], config, second_teacher=second, agreement=AgreementMetric())
    kept = {p.prompt: p.completion for p in ds.train}
    assert kept == {f"shift: {w} =": solve("shift", w) for w in words[::2]}
    assert ds.rejected == {"second_teacher_disagreed": 3}
    assert ds.by_source == {"teacher_agreed": 3}
    store.close()
