"""The Markdown section of ``bench.structured`` (from its results JSON).

Rendering only: nothing here measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import RESULTS
from bench.structured import NAME


def _f(v: float | None, fmt: str = "{:.1%}") -> str:
    return "n/a" if v is None else fmt.format(v)


_SCORERS = ("mean_logprob", "min_logprob", "quantile_10", "quantile_25")


def _aurocs(row: dict[str, Any], key: str) -> str:
    return " / ".join(_f(row.get(key, {}).get(k), "{:.3f}") for k in _SCORERS)


def _engines(data: dict[str, Any]) -> list[str]:
    lines = [
        f"Student `{data.get('student', '?')}`:",
        "",
        "| family | teacher valid | student valid | student ended on its own | structural agreement "
        "| AUROC raw log-probs (mean / min / q10 / q25) | AUROC grammar-masked log-probs |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, row in data["families"].items():
        lines.append(
            f"| {family} | {_f(row['teacher_valid'])} | {_f(row['student_valid'])} "
            f"| {_f(row['student_ended_on_its_own'])} | {_f(row['structural_agreement'])} "
            f"| {_aurocs(row, 'auroc_raw')} | {_aurocs(row, 'auroc_masked')} |"
        )
    tps = data["student_tokens_per_s"]
    lines += [
        "",
        f"Student tokens/s on the same prompts: {tps['constrained']:.0f} constrained, "
        f"{tps['unconstrained']:.0f} unconstrained ({tps['constrained'] / tps['unconstrained']:.2f}x).",
        "",
    ]
    return lines


def _loop(loop: dict[str, Any]) -> list[str]:
    lines = [
        "| window | family | requests | escalation | structural agreement (served vs teacher) "
        "| refreshed student asked by name: agreement / AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for label, window in loop["windows"].items():
        for family, row in window.items():
            if family == "validity":
                continue
            lines.append(
                f"| {label} | {family} | {row['requests']} | {_f(row['escalation_rate'])} "
                f"| {_f(row['structural_agreement'])} | {_f(row['final_student_agreement'])} / "
                f"{_f(row['final_student_auroc'], '{:.3f}')} |"
            )
    results = [
        f"{e['result']} ({e.get('detail', '')}; stages {e.get('timings_s', {})})"
        for e in loop["scenario"]["loop"]
    ]
    text = [
        f"| {w['label']} | {w['requests']} | {_f(w['escalation_rate_old_skills'])} "
        f"| {_f(w['accuracy_old_skills'])} |"
        for w in loop["scenario"]["windows"]
    ]
    return [
        *lines,
        "",
        "The free-text routes the student already knew, in the same windows:",
        "",
        "| window | requests (all routes) | old-route escalation | old-route served agreement |",
        "|---|---|---|---|",
        *text,
        "",
        f"Refreshes: {'; '.join(results) or 'none'}; scenario {loop['scenario_s']:.0f} s.",
        "",
    ]


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    summary = data["summary"]
    lines = [
        "## Structured outputs and tool calls (`bench/structured.py`)",
        "",
        "Real pair (SmolLM2-135M-Instruct teacher, its 8-layer student), the support domain's "
        "`ticket_json` (`response_format` json_schema) and `tool_call` (`tools`, `tool_choice: "
        "required`) families, both engines decoding under the same constraint.",
        "",
        "```json",
        json.dumps(summary, indent=2),
        "```",
        "",
        '**Engines, in process** (greedy constrained answers; AUROC for "agrees structurally with '
        'the teacher", on the raw log-probs the cascade scores and, for the same answers, on the '
        "grammar-masked renormalised ones), the bootstrapped student first:",
        "",
        *_engines(data["engines"]),
    ]
    if data.get("loop"):
        lines += ["**One automatic refresh through the `distillery run` stack:**", "", *_loop(data["loop"])]
    if data.get("engines_after"):
        lines += ["**Engines again, on the refreshed student:**", "", *_engines(data["engines_after"])]
    return lines
