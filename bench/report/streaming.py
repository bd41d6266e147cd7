"""The Markdown section of ``bench.streaming`` (from its results JSON).

Rendering only: nothing here measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import RESULTS
from bench.streaming import NAME, TARGETS


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _ttft_table(suite: dict[str, Any]) -> list[str]:
    lines = [
        "| server | requests | clients | TTFT p50 ms | TTFT p99 ms | whole answer p50 ms | tiers |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, points in suite["targets"].items():
        for key, p in points.items():
            if key == "sets":
                continue
            which, _, c = key.rpartition("_c")
            tiers = ", ".join(f"{k or 'none'} {v}" for k, v in p["tiers"].items())
            lines.append(
                f"| {TARGETS[target]} | {which} | {c} | {_ms(p['ttft_p50_ms'])} | {_ms(p['ttft_p99_ms'])} "
                f"| {_ms(p['whole_p50_ms'])} | {tiers} |"
            )
    return lines


def _decision_table(suite: dict[str, Any]) -> list[str]:
    d = suite["decisions"]
    whole, early = d["whole_answer"], d["early"]
    lines = [
        f"Decisions on the same {d['n']} whole requests (1 client), agreement under "
        f"`{whole['agreement_metric']}` with the teacher's own answer (escalated answers agree):",
        "",
        "| requests | escalation, whole answer | escalation, early | served agreement, whole answer "
        "| served agreement, early |",
        "|---|---|---|---|---|",
        f"| all | {whole['escalation_rate']:.1%} | {early['escalation_rate']:.1%} "
        f"| {whole['agreement']:.1%} | {early['agreement']:.1%} |",
    ]
    for family, w in whole["by_family"].items():
        e = early["by_family"][family]
        lines.append(
            f"| {family} ({w['n']}) | {w['escalation_rate']:.1%} | {e['escalation_rate']:.1%} "
            f"| {w['agreement']:.1%} | {e['agreement']:.1%} |"
        )
    lat = suite["escalated_whole_latency"]
    lines += [
        "",
        f"Decisions that differ between the two: {d['decisions_differ']} of {d['n']}. Whole "
        f"(non-streamed) latency p50 of the {lat['escalated_in_both']} requests escalated under "
        f"both: **{_ms(lat['before_p50_ms'])} ms** deciding on the whole answer, "
        f"**{_ms(lat['after_p50_ms'])} ms** deciding early (the student cancelled at its commit "
        f"point, or skipped where the route prior says so); served requests "
        f"{_ms(lat['served_before_p50_ms'])} / {_ms(lat['served_after_p50_ms'])} ms.",
    ]
    return lines


def _prior_table(suite: dict[str, Any]) -> list[str]:
    table = suite.get("route_prior")
    if not table:
        return []
    lines = [
        "The streaming gateway's route prior, learned from its own decisions on the learning "
        "candidates (every served answer sampled): a `teacher` verdict sends the route past the "
        "student (escalated, decided at 0 tokens; 5% still explore the cascade).",
        "",
        "| route | escalations | samples | rate | 95% interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['route']} | {r['escalations']} | {r['samples']} | {r['rate']:.1%} "
            f"| {r['lower']:.3f}-{r['upper']:.3f} | {r['verdict'] or 'none'} |"
        )
    return [*lines, ""]


def _suite(name: str, suite: dict[str, Any]) -> list[str]:
    commit = suite.get("commit")
    rule = (
        f"commit at {commit['tokens']} token(s), prefix bar {commit['bar']:.4f} (calibrated on {commit['n']} "
        f"answers: {commit['flips']:.1%} of decisions differ from the whole answer's)"
        if commit
        else "no commit rule (answers judged whole)"
    )
    return [
        f"**{name}** (`{Path(suite['models_dir']).name}`, max_tokens {suite['max_tokens']}, "
        f"threshold {suite['threshold']:.4f}; {rule})",
        "",
        *_ttft_table(suite),
        "",
        *_decision_table(suite),
        "",
        *_prior_table(suite),
    ]


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _targets(s: dict[str, Any]) -> list[str]:
    """The issue's targets against the summary (the real pair's where it ran)."""
    rows = ["| target | measured | |", "|---|---|---|"]
    ratio = s.get("ttft_ratio_c1")
    if ratio is not None:
        demo = s.get("demo_ttft_ratio_c1")
        also = f" (demo {demo:.2f}x)" if demo is not None else ""
        rows.append(
            f"| student-served TTFT p50 at 1 client within 1.5x of vLLM's own server | {ratio:.2f}x{also} "
            f"| {_met(ratio <= 1.5)} |"
        )
    cut = s.get("escalated_latency_reduction")
    if cut is not None:
        rows.append(
            f"| escalated whole (non-streamed) latency down >= 30% | {cut:.1%} "
            f"({s['escalated_latency_before_ms']:.0f} -> {s['escalated_latency_after_ms']:.0f} ms) "
            f"| {_met(cut >= 0.3)} |"
        )
    whole, early = s.get("agreement_whole_answer"), s.get("agreement_early_decision")
    if whole is not None and early is not None:
        rows.append(
            f"| served agreement, early decision not > 1 point below the whole answer's "
            f"| {early:.1%} vs {whole:.1%} | {_met(early >= whole - 0.01)} |"
        )
    return [*rows, ""]


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    m, s = data["machine"], data["summary"]
    lines = [
        "## Streaming cascade: first token at the student's speed, escalations without the "
        "student's whole answer",
        "",
        f"Machine: {m['cpus']} cores, {m['cpu']}, {m['mem_gib']} GiB; {m['when']}. Three servers on",
        "the same student directory, one after the other: `distillery run` deciding on the whole",
        "answer (`stream_mode: replay`), the same deciding on the student's prefix (`live`), and",
        "vLLM's own OpenAI server. TTFT is the time to the first non-empty text a stream reader",
        "sees; the streamed sets are the requests the replay gateway served / escalated.",
        "",
        "| summary | value |",
        "|---|---|",
        *(f"| `{k}` | {v} |" for k, v in s.items()),
        "",
    ]
    lines += _targets(s)
    for name in ("real", "demo"):
        if name in data["suites"]:
            lines += _suite("real pair" if name == "real" else "demo", data["suites"][name])
    return lines
