"""Rendering ``docs/benchmarks.md`` from ``bench/results/*.json``: the targets' summary and
one section per benchmark (``bench.report.<name>.render``). Nothing here measures."""

from __future__ import annotations

import importlib
import json

from bench._common import REPO, RESULTS

__all__ = ["DOC", "IMG", "document"]

DOC = REPO / "docs" / "benchmarks.md"
IMG = REPO / "docs" / "img"


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
    lr = RESULTS / "loop_robustness.json"
    if lr.is_file():
        from bench.report.loop_robustness import _pct, _pts, _s, _x  # the section's own formats

        s = json.loads(lr.read_text())["summary"]
        met, n = s["met"], s["runs"]
        for name, bar, value, ok in (
            (
                "promoted on the first refresh",
                ">= 4 of 5",
                f"{s['promoted_first_refresh']} of {n}",
                met["promoted_first_refresh"] and met["runs"],
            ),
            (
                "drifted escalations halve, every promoted run",
                "<= 0.5x",
                f"median after {_pct(s['median_drifted_escalation_after'])}",
                met["drifted_escalation_halves_every_promoted_run"],
            ),
            (
                "old-route escalation rise, every promoted run",
                "<= 5 points",
                f"worst {_pts(s['worst_old_escalation_delta'])}",
                met["old_escalation_every_promoted_run"],
            ),
            (
                "cycle while serving, every run",
                "<= 900 s",
                f"max {_s(s['max_cycle_s'])}",
                met["cycle_every_run"],
            ),
            (
                "serving p99 during a refresh vs idle (worst run)",
                "<= 2x",
                _x(s["serving_p99_ratio_during_refresh"]),
                met["serving_p99_ratio"],
            ),
        ):
            rows.append(
                f"| loop robustness ({n} runs): {name} | {bar} | {value} | {'met' if ok else '**missed**'} |"
            )
    lq = RESULTS / "live_quality.json"
    if lq.is_file():
        s = json.loads(lq.read_text())["summary"]
        cost, share = s["audit_cost_vs_teacher_only"], s["audit_share"]
        rows.append(
            f"| live quality: audit cost vs teacher-only at a {share:.0%} share (demo) | <= 3% "
            f"| {cost:.2%} | {'met' if cost <= 0.03 else '**missed**'} |"
        )
        caught = s["confidently_wrong_candidate_rolled_back"]
        rows.append(
            "| live quality: a confidently wrong canary (escalates less) is rolled back | caught "
            f"| {'rolled back' if caught else 'promoted'} | {'met' if caught else '**missed**'} |"
        )
    st = RESULTS / "structured.json"
    if st.is_file():
        s = json.loads(st.read_text())["summary"]
        if s.get("structured_escalation_before") is not None:
            valid = min(
                v
                for v in (s["json_validity"], s["tool_call_validity"], s["engine_validity"])
                if v is not None
            )
            rows.append(
                f"| contracts: every json_schema answer and forced call valid (both tiers, real pair) | 100% "
                f"| {valid:.1%} | {'met' if valid == 1.0 else '**missed**'} |"
            )
            before, after = s["structured_escalation_before"], s["structured_escalation_after"]
            agree = min(s["structural_agreement_after"], s["tool_call_agreement_after"])
            ok = after <= before / 2 and agree >= 0.95
            rows.append(
                "| contracts: structured escalations after one refresh, at >= 95% structural agreement "
                f"| <= 50% of before | {before:.1%} -> {after:.1%} at {agree:.1%} "
                f"| {'met' if ok else '**missed**'} |"
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


def document(names: list[str]) -> str:
    """The whole of ``docs/benchmarks.md``: the summary, then each benchmark's section."""
    lines = [
        "# Benchmarks",
        "",
        "Regenerated by `make bench` (`python -m bench`) from `bench/results/*.json` (raw numbers",
        "and machine info there). Benchmarks are not tests: nothing here is asserted in `make test`.",
        "",
        *_summary(),
    ]
    for name in names:
        lines += importlib.import_module(f"bench.report.{name}").render(IMG)
    return "\n".join(lines)
