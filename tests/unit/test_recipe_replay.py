"""``bench.recipe_replay``'s pure parts: the store as it stood, the first refresh's time,
the per-variant summary."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from bench.recipe_replay import first_refresh_at, store_as_of, summarise


def test_the_store_copy_keeps_only_what_existed_when_the_refresh_began(tmp_path: Path) -> None:
    src = tmp_path / "feedback.db"
    db = sqlite3.connect(src)
    db.execute("CREATE TABLE feedback_events (request_id TEXT, created_at REAL)")
    db.execute("CREATE TABLE feedback_ratings (request_id TEXT, created_at REAL)")
    db.executemany("INSERT INTO feedback_events VALUES (?, ?)", [("a", 1.0), ("b", 2.0), ("c", 3.0)])
    db.executemany("INSERT INTO feedback_ratings VALUES (?, ?)", [("a", 1.5), ("c", 3.5)])
    db.commit()
    db.close()
    store_as_of(src, tmp_path / "copy.db", cutoff=2.0)
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert [r for (r,) in copy.execute("SELECT request_id FROM feedback_events")] == ["a"]
    assert [r for (r,) in copy.execute("SELECT request_id FROM feedback_ratings")] == ["a"]
    source = sqlite3.connect(src)
    assert source.execute("SELECT count(*) FROM feedback_events").fetchone() == (3,)  # untouched


def test_the_first_refresh_is_the_first_tick_that_trained(tmp_path: Path) -> None:
    events = [
        {"at": 10.0, "result": "no_refresh"},
        {"at": 20.0, "result": "skipped"},
        {"at": 30.0, "result": "refused"},
        {"at": 40.0, "result": "promoted"},
    ]
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "loop_events.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    assert first_refresh_at(tmp_path) == 30.0


def run(seed: int, variant: str, train_s: float, drifted: float, old_delta: float) -> dict[str, object]:
    return {
        "seed": seed,
        "variant": variant,
        "passed": True,
        "timings_s": {"train": train_s, "gate": 90.0},
        "candidate": {"escalation_rate": 0.2, "holdout_agreement": 0.7},
        "drifted_accuracy": drifted,
        "old_accuracy_delta_min": old_delta,
    }


def test_a_variant_is_weighed_against_the_shipped_recipe_on_the_same_seeds() -> None:
    runs = [
        run(1, "shipped", 300.0, 0.8, 0.0),
        run(2, "shipped", 400.0, 0.7, -0.02),
        run(1, "frozen_4", 150.0, 0.6, 0.01),
        run(2, "frozen_4", 300.0, 0.5, -0.05),
    ]
    s = summarise(runs)
    assert s["frozen_4"]["train_ratio_vs_shipped"] == 0.625  # (0.5 + 0.75) / 2
    assert s["frozen_4"]["drifted_accuracy_mean"] == 0.55
    assert s["frozen_4"]["old_accuracy_delta_worst"] == -0.05
    assert s["shipped"]["train_ratio_vs_shipped"] == 1.0
    assert "passes_4" not in s
