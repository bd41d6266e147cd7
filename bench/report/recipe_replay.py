"""The Markdown section of ``bench.recipe_replay`` (from its results JSON).

Rendering only: nothing here measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import RESULTS
from bench.recipe_replay import NAME
from bench.report.loop_robustness import _pct, _pts  # the loop sections' formats


def _routes(r: dict[str, Any], side: str, names: list[str]) -> str:
    return ", ".join(f"{n} {_pct(r[side]['per_route'].get(n))}" for n in names)


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    m, s = data["machine"], data["summary"]
    lines = [
        "## Refresh recipes replayed on stored runs (`bench/recipe_replay.py`)",
        "",
        f"{m['cpus']} cores, {m['cpu']}; {m['when']}. The first refresh of stored loop-robustness",
        "runs, replayed alone on each run's store as it stood when that refresh began (a fresh",
        f"registry with the `{data['options']['preset']}` preset's student; dataset, TRL and the",
        "gate as shipped), once per recipe. Training seconds are measured alone: beside the",
        "scenario's serving load the loop measured 2.0-2.6x these, so compare ratios.",
        "",
        "| recipe | overrides | seeds | gate passed | training (alone) | vs shipped | gate | "
        "escalation at its threshold | drifted routes' accuracy | worst old route change |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, v in s.items():
        overrides = json.dumps(data["variants"][variant]) if data["variants"][variant] else "(none)"
        ratio = "n/a" if v["train_ratio_vs_shipped"] is None else f"{v['train_ratio_vs_shipped']:.2f}x"
        cells = [
            variant,
            f"`{overrides}`",
            ", ".join(map(str, v["seeds"])),
            f"{v['passed']} of {len(v['seeds'])}",
            f"{v['train_s_mean']:.0f} s",
            ratio,
            f"{v['gate_s_mean']:.0f} s",
            _pct(v["escalation_mean"]),
            _pct(v["drifted_accuracy_mean"]),
            _pts(v["old_accuracy_delta_worst"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| seed | recipe | steps | train / gate (s) | current: suite accuracy per route, escalation | "
        "candidate: suite accuracy per route, escalation | gate |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        names = sorted(r["current"]["per_route"])
        t = r["timings_s"]
        lines.append(
            f"| {r['seed']} | {r['variant']} | {r['steps']} | {t['train']:.0f} / {t['gate']:.0f} "
            f"| {_routes(r, 'current', names)}; {_pct(r['current']['escalation_rate'])} "
            f"| {_routes(r, 'candidate', names)}; {_pct(r['candidate']['escalation_rate'])} "
            f"| {'passed' if r['passed'] else 'refused: ' + '; '.join(r['reasons'])} |"
        )
    lines.append("")
    return lines
