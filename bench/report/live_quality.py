"""The Markdown section of ``bench.live_quality`` (from its results JSON). Rendering only."""

from __future__ import annotations

import json
from pathlib import Path

from bench._common import RESULTS


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _latency_lines(lat: dict[str, dict[str, float]]) -> list[str]:
    if "audits_off" not in lat or "audits_all" not in lat:
        return []
    lines = [
        "Client latency with audits off, at the default 2% and on **every** student-served",
        "answer (fresh stacks, the same load of 8 clients, one after the other): the audit is",
        "offered after the response is sent, so no answer waits for one.",
        "",
        "| audits | requests | audits made | p50 | p99 |",
        "|---|---|---|---|---|",
    ]
    for name, key in (("off", "audits_off"), ("2%", "audits_default"), ("100%", "audits_all")):
        if key not in lat:
            continue
        r = lat[key]
        p50, p99 = r["p50_ms"], r["p99_ms"]
        lines.append(f"| {name} | {r['requests']:.0f} | {r['audits']:.0f} | {p50:.1f} ms | {p99:.1f} ms |")
    return [
        *lines,
        "",
        "What audits can cost the serving path is CPU (at 100% the teacher answers every",
        "student-served request a second time on the same two cores), not waiting. Separate",
        "stacks run one after the other differ by about this much on this machine anyway: the",
        "2% run made 4 audits in 800 requests, which cannot cost 10 ms at the median, and an",
        "earlier run the same hour measured the 100% stack at 212 / 498 ms.",
        "",
    ]


def render(img_dir: Path) -> list[str]:
    path = RESULTS / "live_quality.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    m, s, a, cfg = data["machine"], data["summary"], data["audits"], data["audit_config"]
    low, high = a["missed_rate_interval_per_1000"]
    estimate = a["missed_rate_estimate_per_1000"]
    dropped = ", ".join(f"{k} {v:.0f}" for k, v in a["dropped"].items() if v) or "none"
    est = "n/a" if estimate is None else f"{estimate:.1f}"
    rows = [
        ("answers the student served", f"{a['student_served']:,}"),
        ("audited (share realised)", f"{a['audited']:.0f} ({a['audit_share_realised']:.1%})"),
        ("audits dropped, by reason", dropped),
        (
            "**missed escalations found per 1,000 served answers**",
            f"**{s['missed_escalations_per_1000']:.2f}**",
        ),
        ("miss rate the audits estimate, per 1,000 (95% Wilson)", f"{est} ({low}-{high})"),
        ("miss rate by the toy domain's ground truth, per 1,000", f"{a['missed_rate_true_per_1000']:.1f}"),
        ("**audit cost vs teacher-only** (target <= 3%)", f"**{a['audit_cost_vs_teacher_only']:.2%}**"),
        ("spend vs teacher-only, audits excluded", f"{a['spend_vs_teacher_only']:.1%}"),
    ]
    share, canary_share, cap = cfg["share"], cfg["canary_share"], cfg["max_per_s"]
    lines = [
        "## Live quality: shadow audits, their cost, and the canary they guard",
        "",
        f"Machine: {m['cpus']} cores, {m['cpu']}, {m['mem_gib']} GiB; {m['when']}. Demo models,",
        f"one `distillery run` stack, audits at their defaults (share {share:.0%} of the answers",
        f"the student serves, {canary_share:.0%} of a canary's, at most {cap:g} teacher calls/s).",
        f"Traffic: {a['requests']:,} completions over all four toy skills (the student knows",
        "two), 8 at a time.",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "A missed escalation is an answer the student served confidently that the teacher",
        "answers differently; each one found is also a training event (kind `audit`). The audits",
        "see only the share they sample, so *found* scales with the share; the *estimate* is the",
        "rate over all served answers, and the ground-truth row checks it.",
        "",
    ]
    lines += _latency_lines(data["latency"] or {})
    lines += [
        "Canary, judged on escalations and live agreement (`canary.min_audits` 30, rollback when",
        "the upper Wilson bound of the canary's agreement is below the reference by 5 points):",
        "",
        "| candidate | verdict | escalation-only rule | canary escalation | current escalation"
        " | canary audits | canary agreement (95% interval) | took |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, c in data["canary"].items():
        can, cur = c["canary"], c["current"]
        lo, hi = can["agreement_interval"]
        cells = [
            label,
            f"**{c['verdict']}**",
            c["escalation_only_verdict"],
            _pct(can["escalation_rate"]),
            _pct(cur["escalation_rate"]),
            f"{can['audited']:.0f}",
            f"{_pct(can['agreement'])} ({lo:.2f}-{hi:.2f})",
            f"{c['seconds']:.0f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "The overconfident candidate has the student's weights and a calibration that trusts every",
        "answer: on the route it never learned it stops escalating and serves wrong answers. It",
        "escalates less than the serving version, so the escalation rule alone promotes it; its",
        "audits show the agreement drop and the canary rolls it back. The healthy candidate (the",
        "student re-registered) is promoted by the same rule.",
        "",
        f"`summary`: `{json.dumps(s)}`",
        "",
    ]
    return lines
