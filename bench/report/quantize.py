"""The Markdown section of ``bench.quantize`` (from its results JSON).

Rendering only: nothing here measures (``python -m bench --render-only`` rebuilds the report
without running a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import RESULTS
from bench.quantize import NAME


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _table(which: str, data: dict[str, Any]) -> list[str]:
    variants = data["variants"]
    base = variants["fp32"]
    b8 = base["gateway"]["8"]["tokens_per_s"]
    lines = [
        f"**{which} student** ({data['suite']} suite requests; gateway: tier-pinned student, "
        f"{data['max_tokens']} new tokens, median of the rounds)",
        "",
        "| variant | gate | agrees with parent | with teacher | threshold (shift) | ECE | escalation "
        "| AUROC | engine tok/s | RSS MB (peak) | disk MB | gateway tok/s @8 (vs fp32) | p50/p99 ms @1 "
        "| p50/p99 ms @8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in variants.items():
        g1, g8, e = v["gateway"]["1"], v["gateway"]["8"], v["engine"]
        gate = "parent" if name == "fp32" else ("passed" if v["passed"] else "**refused**")
        lines.append(
            f"| {name} | {gate} | {_f(v['agreement_with_parent'], '{:.1%}')} "
            f"| {_f(v['agreement_with_teacher'], '{:.1%}')} "
            f"| {v['threshold']:.4f} ({v['threshold_shift']:+.4f}) | {v['ece']:.3f} "
            f"| {v['escalation_rate']:.1%} | {_f(e['auroc'])} | {e['tokens_per_s']:.0f} "
            f"| {e.get('rss_mb', 0):.0f} ({e['peak_rss_mb']:.0f}) | {v['size_on_disk_mb']:.0f} "
            f"| {g8['tokens_per_s']:.0f} ({g8['tokens_per_s'] / b8:.2f}x) "
            f"| {g1['p50_ms']:.0f} / {g1['p99_ms']:.0f} | {g8['p50_ms']:.0f} / {g8['p99_ms']:.0f} |"
        )
    refused = [
        f"{n}: {'; '.join(v['reasons'])}" for n, v in variants.items() if n != "fp32" and not v["passed"]
    ]
    if refused:
        lines += ["", "Refused: " + " · ".join(refused)]
    return [*lines, ""]


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    lines = [
        "## Quantized students (`bench/quantize.py`)",
        "",
        "Each CPU scheme of `distillery models quantize` against fp32, on both students, side by",
        "side in one run: the gate's numbers (recalibrated on the regression suite, judged against",
        "the parent), the engine alone in a fresh process (speed, peak memory, AUROC of the",
        "confidence for agreeing with the teacher), and the gateway with each variant promoted in",
        "turn through the registry (the production hot-swap path). Disk size is the parent's: the",
        "schemes quantize at load (the directory keeps the parent's weights and names the scheme).",
        "fp8 (vLLM, GPU) is written and untested here: no GPU was lent.",
        "",
    ]
    for which in ("real", "demo"):
        if which in data["students"]:
            lines += _table(which, data["students"][which])
    s = data.get("summary")
    if s:
        ok = s["tokens_per_s_ratio"] >= 1.3 and s["agreement_with_parent"] >= 0.98
        f = s.get("fastest") or s
        lines += [
            f"Target on the real student (a CPU scheme with >= 1.3x tokens/s and >= 98% agreement with "
            f"its parent): best scheme ({s.get('chosen_as', 'fastest passing')}) `{s['scheme']}` at "
            f"{s['tokens_per_s_ratio']:.2f}x and {s['agreement_with_parent']:.1%}; the fastest, "
            f"`{f['scheme']}`, at {f['tokens_per_s_ratio']:.2f}x and {f['agreement_with_parent']:.1%}: "
            f"**{'met' if ok else 'missed'}**.",
            "",
        ]
    return lines
