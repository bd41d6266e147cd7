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


PARENTS = ("fp32", "fp32_vllm")


def _machine(data: dict[str, Any]) -> str:
    m = data.get("machine")
    return f"{m['cpus']} cores, {m['cpu']}, {m['when']}; " if m else ""


def _table(which: str, data: dict[str, Any]) -> list[str]:
    variants = data["variants"]
    lines = [
        f"**{which} student** ({_machine(data)}{data['suite']} suite requests; gateway: tier-pinned student, "
        f"{data['max_tokens']} new tokens, median of the rounds; each scheme against the fp32 parent "
        "on its own engine)",
        "",
        "| variant | engine | gate | agrees with parent | with teacher | threshold (shift) | ECE "
        "| escalation | AUROC | engine tok/s | RSS MB (peak) | disk MB | gateway tok/s @8 (vs fp32) "
        "| @16 (vs fp32) | p50/p99 ms @1 | p50/p99 ms @8 | quantize s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in variants.items():
        base = variants[v.get("parent", "fp32") if name not in PARENTS else name]
        g1, g8, e = v["gateway"]["1"], v["gateway"]["8"], v["engine"]
        g16, b16 = v["gateway"].get("16"), base["gateway"].get("16")
        at16 = (
            f"{g16['tokens_per_s']:.0f} ({g16['tokens_per_s'] / b16['tokens_per_s']:.2f}x)"
            if g16 and b16
            else "-"
        )
        gate = "parent" if name in PARENTS else ("passed" if v["passed"] else "**refused**")
        quantize_s = v.get("quantize_seconds")
        lines.append(
            f"| {name} | {v.get('engine_kind', 'transformers')} | {gate} "
            f"| {_f(v['agreement_with_parent'], '{:.1%}')} "
            f"| {_f(v['agreement_with_teacher'], '{:.1%}')} "
            f"| {v['threshold']:.4f} ({v['threshold_shift']:+.4f}) | {v['ece']:.3f} "
            f"| {v['escalation_rate']:.1%} | {_f(e['auroc'])} | {e['tokens_per_s']:.0f} "
            f"| {e.get('rss_mb', 0):.0f} ({e['peak_rss_mb']:.0f}) | {v['size_on_disk_mb']:.0f} "
            f"| {g8['tokens_per_s']:.0f} ({g8['tokens_per_s'] / base['gateway']['8']['tokens_per_s']:.2f}x) "
            f"| {at16} | {g1['p50_ms']:.0f} / {g1['p99_ms']:.0f} | {g8['p50_ms']:.0f} / {g8['p99_ms']:.0f} "
            f"| {_f(quantize_s, '{:.0f}')} |"
        )
    refused = [
        f"{n}: {'; '.join(v['reasons'])}" for n, v in variants.items() if n not in PARENTS and not v["passed"]
    ]
    if refused:
        lines += ["", "Refused: " + " · ".join(refused)]
    calibrated = [f"{n}: {v['calibration']}" for n, v in variants.items() if v.get("method")]
    if calibrated:
        lines += ["", "Checkpoint calibration: " + " · ".join(calibrated)]
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
        "turn through the registry (the production hot-swap path). The torch schemes quantize at",
        "load on the transformers engine (the directory keeps the parent's weights); `w8a8` and",
        "`w4a16` are compressed-tensors checkpoints written by llmcompressor (its own environment),",
        "calibrated on the prompts the parent answered through the live stack, served by vLLM in",
        "bfloat16 and compared with the fp32 parent on vLLM (`fp32_vllm`). A vLLM row's resident",
        "memory includes its engine-core process and its KV cache (1 GiB), so it is comparable",
        "between vLLM rows only; its peak is the front process's.",
        "fp8 (vLLM, GPU) is written and untested here: no GPU was lent.",
        "",
    ]
    for which in ("real", "demo"):
        if which in data["students"]:
            lines += _table(which, data["students"][which])
    s = data.get("summary")
    if s:
        f = s.get("fastest") or s
        met_by = s.get("met_by")
        ok = (
            bool(met_by)
            if met_by is not None
            else s["tokens_per_s_ratio"] >= 1.3 and s["agreement_with_parent"] >= 0.98
        )
        lines += [
            f"Target on the real student (a scheme the gate passes with >= 1.3x gateway tokens/s of its fp32 "
            f"parent, >= 98% agreement with it and at most half its directory): best scheme "
            f"({s.get('chosen_as', 'fastest passing')}) `{s['scheme']}` at {s['tokens_per_s_ratio']:.2f}x "
            f"and {s['agreement_with_parent']:.1%}"
            + (f", directory {s['size_ratio']:.2f}x" if "size_ratio" in s else "")
            + f"; the fastest, `{f['scheme']}`, at {f['tokens_per_s_ratio']:.2f}x and "
            f"{f['agreement_with_parent']:.1%}: **{'met' if ok else 'missed'}**"
            + (f" (by {', '.join(met_by)})" if met_by else "")
            + ".",
            "",
        ]
    return lines
