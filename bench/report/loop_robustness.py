"""The Markdown section and plot of ``bench.loop_robustness`` (from its results JSON).

Rendering only: nothing here measures (``python -m bench --render-only`` rebuilds the report
and the plot without running a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import RESULTS
from bench.loop_robustness import NAME

STAGE_COLOURS = {
    "drift_check": "tab:orange",
    "dataset": "tab:olive",
    "train": "tab:red",
    "gate": "tab:purple",
    "register": "tab:brown",
    "canary": "tab:cyan",
}


_RUN_TABLE_HEAD = (
    "| seed | first refresh | stages (s) | cycle | drifted escalation | old escalation"
    " | agreement after (drifted / old) | probe p99 idle -> refresh | errors during refresh |",
    "|---|---|---|---|---|---|---|---|---|",
)
"""The per-run table's head, for the shipped recipe's runs and each candidate's."""


def plot(data: dict[str, Any], path: Path) -> str | None:
    """One row per run: escalation on the drifted and the old routes over time (the mix and
    the probe, per bucket; the measured windows as flat segments), the refresh's stages as
    shaded spans, drift detection and the swap as vertical lines."""
    runs = [r for r in data["runs"] if r.get("timeline")]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.3 * len(runs) + 0.9), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        _plot_run(ax, run, data["options"]["bucket_s"])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", ncol=6, frameon=False)
    axes[-1, 0].set_xlabel("minutes since the drifted traffic began")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / (2.3 * len(runs) + 0.9)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _plot_run(ax: Any, run: dict[str, Any], bucket_s: float) -> None:
    t = [row.get("mean_t_s", row["t_s"] + bucket_s / 2) / 60 for row in run["timeline"]]
    colours = {"drifted": "tab:blue", "old": "tab:orange"}
    for group, style in (("drifted", "-o"), ("old", "-s")):
        values = [(row.get(group) or {}).get("escalation_rate") for row in run["timeline"]]
        ax.plot(
            t,
            [float("nan") if v is None else v for v in values],
            style,
            ms=3,
            color=colours[group],
            label=f"escalation, {group} routes (per {bucket_s:g} s)",
        )
    t0 = run["drift_started"]
    for key, w in run["windows"].items():
        group = "drifted" if "drifted" in key else "old"
        rate = w["escalation_rate_new_skills"] if group == "drifted" else w["escalation_rate_old_skills"]
        if rate is not None:
            mid = ((w["started"] + w["ended"]) / 2 - t0) / 60
            label = "measured windows" if key == "before_old" else None
            ax.plot([mid], [rate], "D", ms=6, mfc="none", color=colours[group], label=label)
    first = run.get("first_refresh") or {}
    for mark in first.get("stage_marks", []):
        colour = STAGE_COLOURS.get(mark["stage"], "grey")
        ax.axvspan(mark["start_s"] / 60, mark["end_s"] / 60, color=colour, alpha=0.18, label=mark["stage"])
    if run.get("drift_detected_s") is not None:
        ax.axvline(run["drift_detected_s"] / 60, color="black", ls="--", lw=0.8, label="drift detected")
    if run.get("swap_s") is not None:
        ax.axvline(run["swap_s"] / 60, color="green", lw=1.2, label="swap")
    cycle = "" if run.get("cycle_s") is None else f", cycle {run['cycle_s']:.0f} s"
    ax.set_title(f"seed {run['seed']}: {first.get('result', run.get('outcome'))}{cycle}", fontsize=8)
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel("escalation", fontsize=7)
    ax.tick_params(labelsize=7)


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    image = plot(data, img_dir / "loop_robustness.png")
    s, tg, o, m = data["summary"], data["targets"], data["options"], data["machine"]
    lines = [
        "## Loop robustness: the refresh, run after run",
        "",
        f"`bench/loop_robustness.py` on the `{o['preset']}` preset, seeds"
        f" {', '.join(map(str, o['seeds']))}; {m['cpus']} cores, {m['cpu']}; {m['when']}.",
        "Each run is a fresh `distillery run` (own var dir, `retrain.seed` = the seed, no nightly",
        f"refresh, student engine `{o['student_kind']}`) whose own loop detects the drift and refreshes.",
        f"Traffic: {o['window']} requests of the old routes, {o['window']} of the drifted routes, then",
        f"the scenario's mix at {o['concurrency']} clients until the refresh's outcome and the swap, with",
        f"a probe (one request every {o['probe_interval_s']:g} s on the old routes) from the first window",
        f"on; then {o['window']} drifted and {o['window']} old requests with no other traffic. Serving p99",
        "is the probe's: *idle* = before the refreshing tick began (same traffic, no refresh running),",
        "*refresh* = from that tick to the swap (or the outcome). Cycle = the refreshing tick's start",
        "(drift detected) -> `/healthz` names the new student.",
        "",
        "| target | bar | measured | |",
        "|---|---|---|---|",
    ]
    met = s["met"]
    runs = s["runs"]
    lines += [
        _row(
            "runs promoted on their first refresh",
            f">= {tg['promoted_first_refresh_share_min']:.0%} of >= {tg['runs_min']}",
            f"{s['promoted_first_refresh']} of {runs}",
            met["promoted_first_refresh"] and met["runs"],
        ),
        _row(
            "drifted-route escalation after / before, every promoted run",
            f"<= {tg['drifted_escalation_ratio_max']:g}",
            f"median after {_pct(s['median_drifted_escalation_after'])}",
            met["drifted_escalation_halves_every_promoted_run"],
        ),
        _row(
            "old-route escalation rise, every promoted run",
            f"<= {tg['old_escalation_delta_max'] * 100:.0f} points",
            f"worst {_pts(s['worst_old_escalation_delta'])}",
            met["old_escalation_every_promoted_run"],
        ),
        _row(
            "cycle, drift detected -> swapped, every run (while serving)",
            f"<= {tg['cycle_s_max']:.0f} s",
            f"median {_s(s['median_cycle_s'])}, max {_s(s['max_cycle_s'])}",
            met["cycle_every_run"],
        ),
        _row(
            "serving p99 during a refresh / idle p99 (worst run)",
            f"<= {tg['serving_p99_ratio_max']:g}x",
            _x(s["serving_p99_ratio_during_refresh"]),
            met["serving_p99_ratio"],
        ),
        "",
        *_RUN_TABLE_HEAD,
    ]
    lines += [_run_row(r) for r in data["runs"]]
    if data.get("recipe"):
        lines += ["", f"Recipe of these runs: {data['recipe']}."]
    if data.get("not_yet_measured"):
        lines += ["", f"Not yet measured: {data['not_yet_measured']}."]
    for trial in data.get("candidate_recipes") or []:
        lines += _candidate_lines(trial)
    history = data.get("recipe_history") or []
    if history:
        lines += [
            "",
            "Earlier recipes (first refreshes, newest last; partial runs stopped after the verdict):",
            "",
            "| recipe | seed | outcome | stages (s) | detail |",
            "|---|---|---|---|---|",
        ]
        lines += [_history_row(h) for h in history]
    if image:
        lines += ["", f"![loop robustness]({Path(image).relative_to(img_dir.parent)})"]
    return [*lines, ""]


def _candidate_lines(trial: dict[str, Any]) -> list[str]:
    """A recipe tried live on some seeds beside the shipped one's full set (same bench,
    same traffic, ``--set`` overrides): its runs and how they stand against the targets."""
    s = trial["summary"]
    sets = " ".join(f"`--set {k}={v}`" for k, v in _dotted(trial["overrides"]))
    seeds = ", ".join(str(r["seed"]) for r in trial["runs"])
    worst_old = _pts(s["worst_old_escalation_delta"])
    return [
        "",
        f"{trial.get('label', 'Candidate recipe, live')}: {trial['recipe']} ({sets}; seeds {seeds},"
        f" {trial.get('when', '')})."
        f" Promoted on the first refresh {s['promoted_first_refresh']} of {s['runs']}; cycle median"
        f" {_s(s['median_cycle_s'])}, max {_s(s['max_cycle_s'])}; drifted escalation after, median"
        f" {_pct(s['median_drifted_escalation_after'])}; old routes worst {worst_old};"
        f" probe p99 ratio {_x(s['serving_p99_ratio_during_refresh'])}.",
        "",
        *_RUN_TABLE_HEAD,
        *(_run_row(r) for r in trial["runs"]),
    ]


def _dotted(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"retrain": {"frozen_layers": 4}}`` -> ``[("retrain.frozen_layers", 4)]``: the
    ``--set`` keys the runs were started with."""
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out += _dotted(value, f"{name}.") if isinstance(value, dict) else [(name, value)]
    return out


def _history_row(h: dict[str, Any]) -> str:
    stages = ", ".join(f"{k} {v:.0f}" for k, v in (h.get("stages_s") or {}).items())
    detail = h.get("detail", "") + (f" ({h['note']})" if h.get("note") else "")
    return f"| {h.get('recipe', '')} | {h.get('seed', '')} | {h.get('outcome', '')} | {stages} | {detail} |"


def _run_row(r: dict[str, Any]) -> str:
    if "groups" not in r:
        return f"| {r['seed']} | failed: {r.get('error', '?')} | | | | | | | |"
    first = r.get("first_refresh")
    if first:
        why = "; ".join(first["reasons"])[:160]
        result = f"{first['result']}" + (f": {why}" if why and first["result"] != "promoted" else "")
        stages = ", ".join(f"{k} {v:.0f}" for k, v in first["timings_s"].items())
    else:
        result, stages = f"none (events: {', '.join(e['result'] for e in r['events'])})", ""
    d, o, lat = r["groups"]["drifted"], r["groups"]["old"], r["latency"]
    cpu = (r.get("machine_cpu") or "").replace("(R)", "").replace(" Processor", "")
    seed = f"{r['seed']} ({cpu})" if cpu else str(r["seed"])
    return (
        f"| {seed} | {result} | {stages} | {_s(r['cycle_s'])} "
        f"| {_pct(d['escalation_before'])} -> {_pct(d['escalation_after'])} "
        f"| {_pct(o['escalation_before'])} -> {_pct(o['escalation_after'])} "
        f"| {_pct(d['agreement_after'])} / {_pct(o['agreement_after'])} "
        f"| {_ms(lat['idle']['p99_ms'])} (n {lat['idle']['n']}) -> {_ms(lat['refresh']['p99_ms'])}"
        f" (n {lat['refresh']['n']}): {_x(lat['p99_ratio'])} "
        f"| {r['background']['errors_during_refresh']} of {r['background']['requests_during_refresh']} |"
    )


def _row(name: str, bar: str, value: str, ok: bool) -> str:
    return f"| {name} | {bar} | {value} | {'met' if ok else '**missed**'} |"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _pts(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:+.1f} points"


def _s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} s"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} ms"


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"
