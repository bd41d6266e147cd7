"""A refresh recipe judged offline on the stores of real loop runs, side by side.

A live loop-robustness run costs ~45 minutes a seed, and most of it is traffic. This
replays the *first refresh* of each stored run (``var/bench/lr/seed-N``, left by
``bench.loop_robustness``): the run's feedback store as it stood when that refresh began
(events created later are deleted from a copy), a fresh registry holding the preset's
student, then the shipped refresh (``distillery._stack.refresh_with_settings``: dataset,
TRL in its own process, the gate on the serving engine) once per recipe variant, with no
serving beside it. The gate's numbers (each route's accuracy on the regression suite, the
held-out agreement, the escalation rate at the candidate's own calibrated threshold) say
what a variant would have taught; the training seconds, measured alone, say what it costs
relative to the shipped recipe (beside serving the ratio holds roughly, the absolute
seconds do not: loop robustness measured 2.0-2.6x these).

A replayed dataset is not byte for byte the live refresh's: seeds 3 and 5 rebuilt the same
row counts per route with another hash (cutting at the dataset stage's start, or on
ingestion time, changed nothing; the cause is not found yet). A verdict here is a recipe's
on nearly the same data, not a re-run of the live refresh, and how far a verdict moves
with a few rows is itself worth knowing (seed 5: refused here, promoted live).

    python -m bench.recipe_replay                          # every stored seed, every variant
    python -m bench.recipe_replay --seeds 3 --variants shipped,frozen_4

Results: ``bench/results/recipe_replay.json`` (merged by seed and variant with what is
there, so a run of a few seeds adds to the others)."""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import RESULTS, write_result

NAME = "recipe_replay"
REPO = Path(__file__).resolve().parent.parent
STORES = REPO / "var" / "bench" / "lr"
WORK = REPO / "var" / "bench" / "recipe_replay"

VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "frozen_4": {"frozen_layers": 4},
    "frozen_4_lr_6e-4": {"frozen_layers": 4, "learning_rate": 6e-4},
    "passes_4": {"max_epochs": 4},
    "passes_3.5_lr_5e-4": {"max_epochs": 3.5, "learning_rate": 5e-4},
}
"""What the shipped smollm2 recipe (5 passes, LR 3e-4, full fine-tuning) is weighed
against: cheaper steps (the lowest 4 of 8 layers and the embeddings frozen: ~2/3 of a
step's arithmetic), with a higher learning rate to make up for them, and fewer passes."""


def first_refresh_at(store_dir: Path) -> float:
    """When the run's first refresh began (its loop event's tick time)."""
    for line in (store_dir / "registry" / "loop_events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["result"] in ("promoted", "refused", "rolled_back"):
            return float(event["at"])
    raise ValueError(f"{store_dir} holds no refresh")


def store_as_of(src: Path, dst: Path, cutoff: float) -> None:
    """A copy of the SQLite store with only the events created before ``cutoff``."""
    source, target = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        source.backup(target)
        target.execute("DELETE FROM feedback_events WHERE created_at >= ?", (cutoff,))
        target.execute("DELETE FROM feedback_ratings WHERE created_at >= ?", (cutoff,))
        target.commit()
    finally:
        source.close()
        target.close()


def replay(seed: int, variant: str, preset: str) -> dict[str, Any]:
    from distillery._stack import refresh_with_settings
    from distillery.settings import load_settings
    from retrain import ensure_registry

    store_dir = STORES / f"seed-{seed}"
    var = WORK / f"seed-{seed}-{variant}"
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    store_as_of(store_dir / "feedback.db", var / "feedback.db", first_refresh_at(store_dir))
    settings = load_settings(preset=preset, var_dir=str(var))
    registry = settings.open_registry()
    ensure_registry(registry, settings.tier_dir("student"))
    recipe = settings.retrain.model_copy(update=VARIANTS[variant])
    started = time.monotonic()
    outcome = refresh_with_settings(settings, registry, recipe)
    gate = outcome.gate
    steps = outcome.model.manifest.get("training", {}).get("steps")
    new_by_route = outcome.dataset.get("new_by_skill", {})
    # The routes the refresh was for: the current student fails them on the suite and
    # they hold new examples (the drifted families).
    drifted = sorted(r for r, acc in gate.current.per_skill.items() if acc < 0.5 and new_by_route.get(r))
    old = sorted(r for r in gate.current.per_skill if r not in drifted)
    cand = gate.candidate
    result = {
        "seed": seed,
        "variant": variant,
        "overrides": VARIANTS[variant],
        "steps": steps,
        "wall_s": round(time.monotonic() - started, 1),
        "timings_s": outcome.timings_s,
        "dataset": {k: outcome.dataset.get(k) for k in ("size", "new", "replay", "holdout", "new_by_skill")},
        "passed": outcome.passed,
        "reasons": gate.reasons,
        "drifted_routes": drifted,
        "old_routes": old,
        "current": _numbers(gate.current),
        "candidate": _numbers(cand),
        "drifted_accuracy": _mean([cand.per_skill[r] for r in drifted]),
        "old_accuracy_min": min((cand.per_skill[r] for r in old), default=None),
        "old_accuracy_delta_min": min(
            (cand.per_skill[r] - gate.current.per_skill[r] for r in old), default=None
        ),
    }
    shutil.rmtree(var / "candidates", ignore_errors=True)  # ~220 MB a candidate
    return result


def _numbers(r: Any) -> dict[str, Any]:
    return {
        "holdout_agreement": r.holdout_agreement,
        "per_route": r.per_skill,
        "escalation_rate": r.escalation_rate,
        "served_agreement": r.served_agreement,
        "invalid_rate": r.invalid_rate,
    }


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, over the seeds it ran on: training seconds as a ratio of the shipped
    recipe's on the same seeds, and what the candidates learned."""
    shipped = {r["seed"]: r for r in runs if r["variant"] == "shipped"}
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        paired = [r for r in mine if r["seed"] in shipped]
        out[variant] = {
            "seeds": sorted(r["seed"] for r in mine),
            "passed": sum(r["passed"] for r in mine),
            "train_s_mean": _mean([r["timings_s"]["train"] for r in mine]),
            "train_ratio_vs_shipped": _mean(
                [r["timings_s"]["train"] / shipped[r["seed"]]["timings_s"]["train"] for r in paired]
            ),
            "gate_s_mean": _mean([r["timings_s"]["gate"] for r in mine]),
            "escalation_mean": _mean([r["candidate"]["escalation_rate"] for r in mine]),
            "drifted_accuracy_mean": _mean(
                [r["drifted_accuracy"] for r in mine if r["drifted_accuracy"] is not None]
            ),
            "old_accuracy_delta_worst": min(
                (r["old_accuracy_delta_min"] for r in mine if r["old_accuracy_delta_min"] is not None),
                default=None,
            ),
            "holdout_agreement_mean": _mean(
                [
                    r["candidate"]["holdout_agreement"]
                    for r in mine
                    if r["candidate"]["holdout_agreement"] is not None
                ]
            ),
        }
    return out


def run(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.recipe_replay")
    p.add_argument("--seeds", default="", help="comma-separated (default: every stored run)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"of: {', '.join(VARIANTS)}")
    p.add_argument("--preset", default="smollm2")
    a = p.parse_args([] if argv is None else argv)
    variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {', '.join(unknown)}")
    stored = sorted(int(d.name.split("-")[1]) for d in STORES.glob("seed-*") if (d / "feedback.db").is_file())
    seeds = [int(s) for s in a.seeds.split(",") if s] or stored
    missing = [s for s in seeds if s not in stored]
    if missing:
        p.error(
            f"no stored loop-robustness run for seed {missing} under {STORES}:"
            " run bench.loop_robustness first"
        )
    path = RESULTS / f"{NAME}.json"
    previous = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs = {(r["seed"], r["variant"]): r for r in previous}
    for seed in seeds:
        for variant in variants:
            print(f"replaying seed {seed} with {variant}", flush=True)
            runs[(seed, variant)] = replay(seed, variant, a.preset)
            ordered = sorted(runs.values(), key=lambda r: (r["seed"], list(VARIANTS).index(r["variant"])))
            payload = {"options": {"preset": a.preset}, "variants": VARIANTS, "runs": ordered}
            write_result(
                NAME, {**payload, "summary": summarise(ordered)}
            )  # after each: a cut run keeps its part
    result: dict[str, Any] = json.loads(path.read_text())
    return result


if __name__ == "__main__":
    run(sys.argv[1:])
