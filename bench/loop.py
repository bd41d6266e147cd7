"""Loop efficacy and cost on the drift scenario, the cascade frontier, refresh cycle time.

Stands up the whole stack as the e2e test does (Tansu broker, feedback consumer into
SQLite, the Serve app, the refresh loop with a live canary) and runs the bundled drift
scenario (``distillery._scenario.run_scenario``, the code behind ``distillery demo
scenario``). Measured:

* per window: escalation rate (drifted vs original skills), cost relative to teacher-only
  (``router.pricing.PricingConfig``: tokens x per-tier price, ``DISTILLERY_PRICING__*``),
  accuracy against the exact answer, and **agreement with the teacher**: the served answer
  equals what the teacher itself answers for the same prompt (the teacher is run offline on
  every served prompt after the scenario);
* an escalation-rate timeline in chunks of requests, with the refresh marked;
* the refresh cycle per stage (drift check, dataset, TRL, gate, register, canary) and the
  swap (until ``/healthz`` reports the new version), from the loop's own timings;
* the cascade frontier: on a fixed mixed-skill prompt set, the student's confidence and
  answer and the teacher's answer once, then the threshold swept offline (escalation
  share, agreement with the teacher, accuracy, cost vs teacher-only), for the student
  before and after the refresh, with the student-only and teacher-only points.

    python -m bench.loop [--window 400] [--drift-requests 3000] [--frontier-per-skill 250]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from bench._common import RESULTS, BackgroundConsumer, free_port, write_result
from common.model_dir import CALIBRATION_FILE

REPO = Path(__file__).resolve().parents[1]
NAME = "loop"
NEW = ("shift", "double")
TARGETS = {
    "escalation_new_skills_max": 0.10,
    "agreement_min": 0.95,
    "cost_vs_teacher_only_max": 0.15,
    "cycle_s_max": 300.0,
}


class _TimedLoop:
    """Wraps the refresh loop: wall clock of each tick, and the swap (promotion until the
    gateway's ``/healthz`` reports the new student version)."""

    def __init__(self, loop: Any, url: str) -> None:
        self._loop = loop
        self._url = url
        self.ticks: list[dict[str, Any]] = []

    def tick(self) -> Any:
        started = time.time()
        event = self._loop.tick()
        ended = time.time()
        swap_s = None
        if event.result == "promoted":
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{self._url}/healthz", timeout=5).json().get("student") == event.version:
                        swap_s = round(time.time() - ended, 2)
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.ticks.append({"started": started, "ended": ended, "swap_s": swap_s, "result": event.result})
        return event


def _stack(var: Path, models: Path) -> tuple[Any, Any, Any]:
    from distillery.settings import load_settings
    from feedback import FeedbackConsumer, SQLiteStore, TansuBroker
    from gateway.app import run_app

    var.mkdir(parents=True, exist_ok=True)
    broker = TansuBroker(log_path=var / "tansu.log").start()
    settings = load_settings(
        models_dir=str(models),
        var_dir=str(var),
        server={"port": free_port()},
        cascade={"teacher_timeout_s": 30},
        feedback={
            "kafka": {"bootstrap": broker.bootstrap},
            "sample_rate": 0.2,
        },
    )
    store = SQLiteStore(var / "feedback.db")
    consumer = BackgroundConsumer(FeedbackConsumer(settings.feedback.kafka, broker.bootstrap, store))
    run_app(settings)
    return settings, broker, consumer


def _generate(model_dir: Path, prompts: Sequence[str]) -> list[Any]:
    from router import generate_prompts
    from router._transformers_backend import TransformersBackend

    backend = TransformersBackend(model_dir, num_threads=2)
    return asyncio.run(generate_prompts(backend, list(prompts), max_tokens=24, batch_size=128))


def _example(item: Any) -> Any:
    """A scenario ``WorkItem`` as the toy example it came from (prompt, answer, skill)."""
    from types import SimpleNamespace

    return SimpleNamespace(prompt=item.pair.prompt, answer=item.truth, skill=item.route)


def _rate(values: Sequence[bool]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _window_detail(
    label: str, examples: Sequence[Any], bodies: Sequence[dict[str, Any]], teacher: dict[str, str], chunk: int
) -> dict[str, Any]:
    served = [b["choices"][0]["text"] for b in bodies]
    esc = [bool(b["distillery"][0]["escalated"]) for b in bodies]
    agree = [s == teacher[e.prompt] for e, s in zip(examples, served, strict=True)]
    right = [s == e.answer for e, s in zip(examples, served, strict=True)]
    new = [e.skill in NEW for e in examples]

    def pick(values: Sequence[bool], group: bool | None) -> list[bool]:
        return [v for v, n in zip(values, new, strict=True) if group is None or n == group]

    chunks = []
    for i in range(0, len(bodies), chunk):
        sl = slice(i, i + chunk)
        n_new, e_new = new[sl], esc[sl]
        chunks.append(
            {
                "requests": len(e_new),
                "escalation": _rate(e_new),
                "escalation_new_skills": _rate([e for e, n in zip(e_new, n_new, strict=True) if n]),
                "escalation_old_skills": _rate([e for e, n in zip(e_new, n_new, strict=True) if not n]),
            }
        )
    return {
        "label": label,
        "requests": len(bodies),
        "agreement_with_teacher": _rate(agree),
        "agreement_new_skills": _rate(pick(agree, True)),
        "agreement_old_skills": _rate(pick(agree, False)),
        "agreement_on_student_answers": _rate([a for a, e in zip(agree, esc, strict=True) if not e]),
        "accuracy": _rate(right),
        "chunks": chunks,
    }


def frontier(
    examples: Sequence[Any],
    student: Sequence[Any],
    teacher: Sequence[Any],
    pricing: Any,
    scorer: str,
    calibrated: float,
) -> dict[str, Any]:
    """The threshold swept offline over one set of student/teacher generations, and the
    operating point at the version's ``calibrated`` threshold."""
    from router import get_scorer

    score = get_scorer(scorer)
    conf = [score(g.token_logprobs if g.text.strip() else []) for g in student]
    s_cost = [pricing.student.cost(g.prompt_tokens, g.completion_tokens) for g in student]
    t_cost = [pricing.teacher.cost(g.prompt_tokens, g.completion_tokens) for g in teacher]
    teacher_only = sum(t_cost)
    s_agree = [s.text == t.text for s, t in zip(student, teacher, strict=True)]
    s_right = [s.text == e.answer for s, e in zip(student, examples, strict=True)]
    t_right = [t.text == e.answer for t, e in zip(teacher, examples, strict=True)]
    new = [e.skill in NEW for e in examples]
    n = len(examples)

    def point(threshold: float) -> dict[str, Any]:
        esc = [c < threshold for c in conf]
        cost = sum(sc + (tc if e else 0.0) for sc, tc, e in zip(s_cost, t_cost, esc, strict=True))
        agree = [True if e else a for e, a in zip(esc, s_agree, strict=True)]
        right = [tr if e else sr for e, sr, tr in zip(esc, s_right, t_right, strict=True)]
        return {
            "threshold": threshold,
            "escalation": round(sum(esc) / n, 4),
            "escalation_new_skills": _rate([e for e, nw in zip(esc, new, strict=True) if nw]),
            "agreement": round(sum(agree) / n, 4),
            "accuracy": round(sum(right) / n, 4),
            "cost_vs_teacher_only": round(cost / teacher_only, 4),
        }

    qs = sorted(set(conf))
    picks = sorted({qs[int(i * (len(qs) - 1) / 80)] for i in range(81)} | {0.0, 1.000001})
    return {
        "curve": [point(t) for t in picks],
        "calibrated": point(calibrated),
        "student_only": {**point(0.0), "cost_vs_teacher_only": round(sum(s_cost) / teacher_only, 4)},
        "teacher_only": {
            "escalation": 1.0,
            "agreement": 1.0,
            "accuracy": round(sum(t_right) / n, 4),
            "cost_vs_teacher_only": 1.0,
        },
    }


def run(argv: list[str] | None = None) -> dict[str, Any]:
    from demo import ALL_SKILLS, sample_examples
    from deploy import CanaryConfig, ModelRegistry
    from distillery._scenario import run_scenario
    from distillery._workloads import demo_regression_suite
    from feedback import open_store
    from retrain import DriftConfig, LoopConfig, RefreshLoop, ensure_registry

    quick = os.environ.get("DISTILLERY_BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(prog="python -m bench.loop")
    parser.add_argument("--window", type=int, default=200 if quick else 400)
    parser.add_argument("--drift-requests", type=int, default=3000)
    parser.add_argument("--frontier-per-skill", type=int, default=100 if quick else 250)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models")
    args = parser.parse_args([] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="dbl-"))
    settings, broker, consumer = _stack(workdir / "v", args.models_dir)
    url = f"http://127.0.0.1:{settings.server.port}"
    registry = ModelRegistry(settings.resolved_registry_dir)
    initial = ensure_registry(registry, settings.tier_dir("student"))
    loop = RefreshLoop(
        open_store(str(workdir / "v" / "feedback.db")),
        registry,
        LoopConfig(
            nightly_at=None,
            sample_rate=settings.feedback.sample_rate,
            drift=DriftConfig(window_s=3600, min_rows=100),
        ),
        canary=CanaryConfig(share=0.3, min_requests=40, timeout_s=240),
        workdir=workdir / "candidates",
        suite=demo_regression_suite(50),
        fetch_metrics=lambda: httpx.get(f"{url}/metrics", timeout=10).text,
    )
    timed = _TimedLoop(loop, url)
    observed: list[tuple[str, Sequence[Any], list[dict[str, Any]]]] = []
    started = time.monotonic()
    try:
        report = run_scenario(
            url,
            timed,  # type: ignore[arg-type]  # duck-typed: only tick() is called
            drift_requests=args.drift_requests,
            window=args.window,
            pricing=settings.pricing,
            observer=lambda label, ex, bodies: observed.append((label, [_example(i) for i in ex], bodies)),
        )
    finally:
        scenario_s = time.monotonic() - started
        from ray import serve

        serve.shutdown()
        import ray

        ray.shutdown()
        consumer.close()
        broker.stop()
    refreshed = registry.current()
    assert refreshed is not None
    teacher_dir = settings.tier_dir("teacher")

    # Agreement with the teacher on every served prompt (the teacher run offline, greedy).
    prompts = sorted({e.prompt for _, ex, _ in observed for e in ex})
    t0 = time.monotonic()
    teacher_text = {p: g.text for p, g in zip(prompts, _generate(teacher_dir, prompts), strict=True)}
    teacher_s = time.monotonic() - t0
    details = [_window_detail(lbl, ex, bodies, teacher_text, args.chunk) for lbl, ex, bodies in observed]
    windows = []
    for stats, detail in zip(report.windows, details, strict=True):
        windows.append({**asdict(stats), **{k: v for k, v in detail.items() if k != "label"}})

    # The cascade frontier before and after the refresh, on one fixed mixed prompt set.
    skills = [s.name for s in ALL_SKILLS]
    examples = sample_examples(skills, args.frontier_per_skill * len(skills), random.Random(2024))
    fp = [e.prompt for e in examples]
    teacher_gens = _generate(teacher_dir, fp)
    scorer = settings.cascade.scorer
    fronts = {}
    for tag, model in (("before", initial), ("after", refreshed)):
        cal = json.loads((model.path / CALIBRATION_FILE).read_text())
        gens = _generate(model.path, fp)
        f = frontier(examples, gens, teacher_gens, settings.pricing, scorer, float(cal["threshold"]))
        fronts[tag] = {"version": model.version, **f}

    cycles = []
    for event, tick in zip(report.loop, timed.ticks, strict=True):
        stages = dict(event["timings_s"])
        if tick["swap_s"] is not None:
            stages["swap"] = tick["swap_s"]
        cycles.append(
            {
                "result": event["result"],
                "version": event["version"],
                "stages_s": stages,
                "total_s": round(sum(stages.values()), 2),
                "tick_wall_s": round(tick["ended"] - tick["started"], 2),
                "detail": event["detail"],
            }
        )
    promoted = next((c for c in cycles if c["result"] == "promoted"), None)
    first_detect_to_swap = None
    if promoted is not None and timed.ticks:
        last = timed.ticks[len(cycles) - 1]
        first_detect_to_swap = round(last["ended"] + (last["swap_s"] or 0) - timed.ticks[0]["started"], 2)
    result = {
        "benchmark": NAME,
        "config": {
            "window": args.window,
            "drift_requests": args.drift_requests,
            "frontier_prompts": len(examples),
            "chunk": args.chunk,
            "pricing": settings.pricing.model_dump(),
            "scorer": scorer,
        },
        "targets": TARGETS,
        "windows": windows,
        "loop": report.loop,
        "cycles": cycles,
        "first_detection_to_swap_s": first_detect_to_swap,
        "frontier": fronts,
        "timings_s": {"scenario": round(scenario_s, 1), "teacher_offline": round(teacher_s, 1)},
    }
    for w in windows:
        print(
            f"[{w['label']}] esc new {w['escalation_rate_new_skills']} old {w['escalation_rate_old_skills']} "
            f"agree {w['agreement_with_teacher']} acc {w['accuracy']} cost {w['cost_vs_teacher_only']:.3f}",
            flush=True,
        )
    print(f"cycles: {cycles}", flush=True)
    print(f"wrote {write_result(NAME, result)}")
    return result


if __name__ == "__main__":
    run(sys.argv[1:])


# ---- the report section ------------------------------------------------------------------
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
