"""The Markdown section and plots of ``bench.loop`` (from its results JSON).

Rendering only: nothing here measures (``python -m bench --render-only`` rebuilds the report
without running a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import RESULTS
from bench.loop import NAME


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _plot_timeline(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    x0 = 0
    xs: list[float] = []
    new: list[float] = []
    old: list[float] = []
    for i, w in enumerate(data["windows"]):
        for c in w["chunks"]:
            xs.append(x0 + c["requests"] / 2)
            new.append(c["escalation_new_skills"] if c["escalation_new_skills"] is not None else float("nan"))
            old.append(c["escalation_old_skills"] if c["escalation_old_skills"] is not None else float("nan"))
            x0 += c["requests"]
        ax.axvspan(x0 - w["requests"], x0, color="grey" if i % 2 else "white", alpha=0.08)
        ax.text(x0 - w["requests"] / 2, 1.07, w["label"], ha="center", fontsize=7)
        if i < len(data["loop"]) + 1 and i >= 1 and i - 1 < len(data["loop"]):
            event = data["loop"][i - 1]
            ax.axvline(x0, linestyle="--", color="black" if event["result"] == "promoted" else "red")
            ax.annotate(f"refresh: {event['result']}", (x0, 0.45), rotation=90, fontsize=7, ha="right")
    ax.plot(xs, new, marker="o", label="escalation, drifted skills (shift, double)")
    ax.plot(xs, old, marker="s", label="escalation, original skills (upper, reverse)")
    ax.axhline(
        data["targets"]["escalation_new_skills_max"], color="green", linestyle=":", label="target <= 10%"
    )
    ax.set_ylim(-0.03, 1.12)
    ax.set_xlabel(f"requests (chunks of {data['config']['chunk']})")
    ax.set_ylabel("escalation rate")
    ax.legend(fontsize=7, loc="center left")
    ax.set_title("Escalation rate across the drift scenario, refresh marked", fontsize=10, pad=18)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_frontier(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for tag, color, dy in (("before", "tab:orange", -11), ("after", "tab:blue", 6)):
        f = data["frontier"][tag]
        pts = sorted(f["curve"], key=lambda p: p["cost_vs_teacher_only"])
        ax.plot(
            [p["cost_vs_teacher_only"] for p in pts],
            [p["agreement"] for p in pts],
            color=color,
            label=f"cascade {tag} refresh ({f['version']})",
        )
        so, cal = f["student_only"], f["calibrated"]
        same = all(cal[k] == so[k] for k in ("cost_vs_teacher_only", "agreement"))
        ax.scatter([so["cost_vs_teacher_only"]], [so["agreement"]], color=color, marker="s")
        ax.annotate(
            f"student-only ({tag})" if not same else f"student-only = calibrated threshold ({tag})",
            (so["cost_vs_teacher_only"], so["agreement"]),
            fontsize=7,
            xytext=(5, dy),
            textcoords="offset points",
        )
        ax.scatter([cal["cost_vs_teacher_only"]], [cal["agreement"]], color=color, marker="*", s=120)
        ax.annotate(
            f"calibrated threshold ({tag})" if not same else "",
            (cal["cost_vs_teacher_only"], cal["agreement"]),
            fontsize=7,
            xytext=(5, dy),
            textcoords="offset points",
        )
    ax.scatter([1.0], [1.0], color="black", marker="D")
    ax.annotate("teacher-only", (1.0, 1.0), fontsize=7, xytext=(-50, -12), textcoords="offset points")
    ax.set_xlabel("cost relative to teacher-only")
    ax.set_ylabel("agreement with the teacher")
    ax.set_title("Cascade frontier: the threshold swept (mixed skills)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    m, cfg, tg = data["machine"], data["config"], data["targets"]
    timeline, front = img_dir / "loop_escalation_timeline.png", img_dir / "cascade_frontier.png"
    _plot_timeline(data, timeline)
    _plot_frontier(data, front)
    price = cfg["pricing"]
    sp, tp = price["student"], price["teacher"]
    lines = [
        "## The loop on the drift scenario",
        "",
        f"Machine: {m['cpus']} cores, {m['cpu']}; {m['when']}. The whole stack as `make run` starts it",
        "(Tansu, feedback consumer, Serve app, refresh loop with a live canary), driven by the code of",
        f"`distillery demo scenario`: {cfg['window']} on-skill requests, {cfg['drift_requests']} drifted",
        "requests (two thirds `shift`/`double`, which the student never learned), a loop tick (drift check",
        f"-> refresh -> gate -> canary), then {cfg['window']} requests mixing all four skills. Cost model:",
        f"`router/pricing.py`, student {sp['input_per_mtok']}/{sp['output_per_mtok']},"
        f" teacher {tp['input_per_mtok']}/{tp['output_per_mtok']} {price['currency']}"
        " per million input/output tokens",
        "(`DISTILLERY_PRICING__*`). Agreement = the served answer equals the teacher's own answer for the",
        "same prompt (the teacher run offline afterwards); accuracy = equals the exact answer.",
        "",
        "| window | requests | escalated (drifted skills) | escalated (original) | agreement w/ teacher "
        "| (drifted / original) | accuracy | cost vs teacher-only | student |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in data["windows"]:
        lines.append(
            f"| {w['label']} | {w['requests']} | {_pct(w['escalation_rate_new_skills'])} "
            f"| {_pct(w['escalation_rate_old_skills'])} | {_pct(w['agreement_with_teacher'])} "
            f"| {_pct(w['agreement_new_skills'])} / {_pct(w['agreement_old_skills'])} "
            f"| {_pct(w['accuracy'])} "
            f"| {_pct(w['cost_vs_teacher_only'])} | {', '.join(w['student_versions'])} |"
        )
    after = data["windows"][-1]
    promoted = next((c for c in data["cycles"] if c["result"] == "promoted"), None)
    cycle = promoted["total_s"] if promoted else None

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    esc = after["escalation_rate_new_skills"]
    agr = after["agreement_with_teacher"]
    cost = after["cost_vs_teacher_only"]
    lines += [
        "",
        "Against the product's targets (after the refresh):",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| drifted-skill requests escalated <= {tg['escalation_new_skills_max']:.0%} | {_pct(esc)} "
        f"| {verdict(None if esc is None else esc <= tg['escalation_new_skills_max'])} |",
        f"| agreement with the teacher on served answers >= {tg['agreement_min']:.0%} | {_pct(agr)} "
        f"| {verdict(None if agr is None else agr >= tg['agreement_min'])} |",
        f"| cost <= {tg['cost_vs_teacher_only_max']:.0%} of teacher-only | {_pct(cost)} "
        f"| {verdict(cost <= tg['cost_vs_teacher_only_max'])} |",
        f"| refresh cycle, drift detected -> swapped <= {tg['cycle_s_max']:.0f} s on CPU "
        f"| {'n/a' if cycle is None else f'{cycle:.0f} s'} "
        f"| {verdict(None if cycle is None else cycle <= tg['cycle_s_max'])} |",
        "",
        f"![escalation timeline]({timeline.relative_to(img_dir.parent)})",
        "",
        "## Refresh cycle time",
        "",
        "Per stage, from the loop's own timings (`LoopEvent.timings_s`, also exported as",
        "`distillery_refresh_stage_seconds{stage}`); swap = promotion until `/healthz` reports the new",
        "student. A candidate the gate refuses is followed by more feedback and one more refresh.",
        "",
    ]
    stages = ["drift_check", "dataset", "train", "gate", "register", "canary", "swap"]
    lines += [
        "| attempt | result | " + " | ".join(stages) + " | total |",
        "|---|---|" + "---|" * (len(stages) + 1),
    ]
    for i, c in enumerate(data["cycles"], 1):
        cells = " | ".join(f"{c['stages_s'][s]:.1f} s" if s in c["stages_s"] else "-" for s in stages)
        lines.append(f"| {i} | {c['result']} | {cells} | {c['total_s']:.1f} s |")
    if data.get("first_detection_to_swap_s") is not None and len(data["cycles"]) > 1:
        lines += [
            "",
            f"From the first detection to the swap, more-feedback window included: "
            f"{data['first_detection_to_swap_s']:.0f} s.",
        ]
    lines += [
        "",
        "## Cascade frontier",
        "",
        f"{cfg['frontier_prompts']} fixed prompts, all four skills in equal shares. The student's",
        "confidence and answer and the teacher's answer are computed once per student version; the",
        "threshold is then swept offline. Agreement with the teacher counts an escalated request as",
        "agreeing (the teacher answered it).",
        "",
        "| student | point | threshold | escalated | agreement w/ teacher | accuracy "
        "| cost vs teacher-only |",
        "|---|---|---|---|---|---|---|",
    ]
    for tag in ("before", "after"):
        f = data["frontier"][tag]
        best = {}
        for target in (0.95, 0.99):
            ok = [p for p in f["curve"] if p["agreement"] >= target]
            if ok:
                best[target] = min(ok, key=lambda p: p["cost_vs_teacher_only"])
        rows = [("student-only", f["student_only"]), ("calibrated threshold", f["calibrated"])]
        rows += [(f"cheapest with agreement >= {t:.0%}", p) for t, p in best.items()]
        for name, p in rows:
            thr = p.get("threshold")
            lines.append(
                f"| {tag} refresh (`{f['version']}`) | {name} | {'-' if thr is None else f'{thr:.4f}'} "
                f"| {_pct(p['escalation'])} | {_pct(p['agreement'])} | {_pct(p['accuracy'])} "
                f"| {_pct(p['cost_vs_teacher_only'])} |"
            )
    t_only = data["frontier"]["after"]["teacher_only"]
    lines += [
        f"| - | teacher-only | - | 100% | 100% | {_pct(t_only['accuracy'])} | 100% |",
        "",
        f"![cascade frontier]({front.relative_to(img_dir.parent)})",
        "",
    ]
    return lines
