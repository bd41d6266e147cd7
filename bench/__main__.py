"""``make bench``: run every benchmark, then regenerate docs/benchmarks.md from the results.

    python -m bench                      # everything (overhead alone ~25 min on 2 cores)
    python -m bench --only overhead,loop # some of them
    python -m bench --render-only        # rebuild the report from bench/results/*.json
    python -m bench --quick              # smaller sizes (DISTILLERY_BENCH_QUICK=1)

A benchmark is a module in ``BENCHMARKS`` with ``run()`` (measures, writes
``bench/results/<name>.json``, takes its own size knobs from env/argv) and
``render(img_dir) -> list[str]`` (its Markdown section, plots written under ``img_dir``;
empty when its results file is missing). Adding one is a one-line edit to the list.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import traceback
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
RESULTS = ROOT / "bench" / "results"

# The loop numbers are for the transformers student (the product default ``auto`` picks
# vLLM where it is installed); vllm_vs_transformers compares the two, and overhead runs
# vLLM in every target (its servers get their own environment).
os.environ.setdefault("DISTILLERY_STUDENT__KIND", "transformers")

# Order = run order = report order.
BENCHMARKS: list[str] = [
    "bench.overhead",
    "bench.loop",
    "bench.feedback_throughput",
    "bench.vllm_vs_transformers",
    "bench.real_loop",
]


def _short(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _summary() -> list[str]:
    """The product's targets against the latest results (only those measured)."""
    rows: list[str] = []
    ov = RESULTS / "overhead.json"
    summary = json.loads(ov.read_text()).get("summary") if ov.is_file() else None
    if summary:
        ours, theirs = summary["gateway_rps_c16"], summary["vllm_server_rps_c16"]
        ours_ms, theirs_ms = summary["gateway_p50_ms_c1"], summary["vllm_server_p50_ms_c1"]
        ratio, extra = ours / theirs, ours_ms - theirs_ms
        rows.append(
            f"| cascade throughput at 16 clients vs vLLM's own server (demo student) | >= 0.9x "
            f"| {ratio:.2f}x ({ours:.0f} vs {theirs:.0f} req/s) "
            f"| {'met' if ratio >= 0.9 else '**missed**'} |"
        )
        rows.append(
            f"| cascade p50 at 1 client vs vLLM's own server (demo student) | <= +3 ms "
            f"| {extra:+.1f} ms ({ours_ms:.1f} vs {theirs_ms:.1f}) "
            f"| {'met' if extra <= 3 else '**missed**'} |"
        )
    lp = RESULTS / "loop.json"
    if lp.is_file():
        data = json.loads(lp.read_text())
        tg, after = data["targets"], data["windows"][-1]
        promoted = next((c for c in data["cycles"] if c["result"] == "promoted"), None)
        checks = [
            (
                "drifted-skill requests escalated after one refresh",
                f"<= {tg['escalation_new_skills_max']:.0%}",
                after["escalation_rate_new_skills"],
                lambda v: v <= tg["escalation_new_skills_max"],
                "{:.1%}",
            ),
            (
                "agreement with the teacher on served answers (after)",
                f">= {tg['agreement_min']:.0%}",
                after["agreement_with_teacher"],
                lambda v: v >= tg["agreement_min"],
                "{:.1%}",
            ),
            (
                "cost relative to teacher-only (after)",
                f"<= {tg['cost_vs_teacher_only_max']:.0%}",
                after["cost_vs_teacher_only"],
                lambda v: v <= tg["cost_vs_teacher_only_max"],
                "{:.1%}",
            ),
            (
                "refresh cycle, drift detected -> swapped",
                f"<= {tg['cycle_s_max']:.0f} s",
                promoted["total_s"] if promoted else None,
                lambda v: v <= tg["cycle_s_max"],
                "{:.0f} s",
            ),
        ]
        for name, target, value, ok, fmt in checks:
            verdict = "n/a" if value is None else ("met" if ok(value) else "**missed**")
            shown = "n/a" if value is None else fmt.format(value)
            rows.append(f"| {name} | {target} | {shown} | {verdict} |")
    rl = RESULTS / "real_loop.json"
    if rl.is_file():
        s = json.loads(rl.read_text())["summary"]
        before, after = s["drifted_escalation_before"], s["drifted_escalation_after"]
        halved = before is not None and after is not None and after <= before / 2
        rows.append(
            f"| real pair: drifted-family escalations after one refresh | half of before or less "
            f"| {before:.1%} -> {after:.1%} | {'met' if halved else '**missed**'} |"
        )
        ok = s["served_agreement_after"] >= 0.95
        rows.append(
            f"| real pair: agreement on served answers (after) | >= 95% | {s['served_agreement_after']:.1%} "
            f"| {'met' if ok else '**missed**'} |"
        )
        old_ok = s["old_agreement_after"] >= s["old_agreement_before"] - 0.03
        rows.append(
            f"| real pair: old-family agreement | not 3 points lower | {s['old_agreement_before']:.1%} -> "
            f"{s['old_agreement_after']:.1%} | {'met' if old_ok else '**missed**'} |"
        )
        cycle = s["refresh_cycle_s"]
        cycle_ok = cycle is not None and cycle <= 900
        rows.append(
            f"| real pair: refresh cycle | <= 900 s | {'n/a' if cycle is None else f'{cycle:.0f} s'} "
            f"| {'met' if cycle_ok else '**missed**'} |"
        )
    if not rows:
        return []
    return [
        "## Summary: the product's targets",
        "",
        "| target | bar | measured | |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def render(modules: list[ModuleType]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Regenerated by `make bench` (`python -m bench`) from `bench/results/*.json` (raw numbers",
        "and machine info there). Benchmarks are not tests: nothing here is asserted in `make test`.",
        "",
        *_summary(),
    ]
    for module in modules:
        lines += module.render(IMG)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", default="", help="comma-separated names, e.g. overhead,loop")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a quick look")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["DISTILLERY_BENCH_QUICK"] = "1"
    only = {x for x in args.only.split(",") if x}
    modules = [importlib.import_module(m) for m in BENCHMARKS]
    failed = []
    if not args.render_only:
        for module in modules:
            name = _short(module.__name__)
            if only and name not in only:
                continue
            print(f"== {name}", flush=True)
            try:
                module.run()
            except Exception:  # one failing benchmark must not lose the others' results
                traceback.print_exc()
                failed.append(name)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render(modules))
    print(f"wrote {DOC}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
