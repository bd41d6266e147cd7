"""``distillery demo scenario``: the whole loop as a story, on the running stack.

Traffic first matches what the student knows, then drifts onto skills it lacks; the
refresh loop notices (Evidently), re-distils (TRL), gates, canaries and promotes; fresh
prompts of the drifted skills then stay with the student. Each window's escalation rate,
served accuracy and cost relative to teacher-only are printed and plotted. The e2e test
runs exactly this code.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from demo import STUDENT_SKILLS, DemoExample, sample_examples
from retrain import LoopEvent, RefreshLoop
from router.pricing import PricingConfig

__all__ = ["ScenarioReport", "WindowObserver", "WindowStats", "run_scenario", "send_window"]

NEW_SKILLS = ("shift", "double")

WindowObserver = Callable[[str, Sequence[DemoExample], list[dict[str, Any]]], None]
"""Sees each window's examples and the gateway's response bodies (benchmarks use it)."""


@dataclass
class WindowStats:
    label: str
    requests: int
    escalation_rate: float
    escalation_rate_new_skills: float | None
    escalation_rate_old_skills: float | None
    accuracy_new_skills: float | None
    accuracy_old_skills: float | None
    cost_vs_teacher_only: float
    student_versions: list[str]
    seconds: float


@dataclass
class ScenarioReport:
    windows: list[WindowStats] = field(default_factory=list)
    loop: list[dict[str, Any]] = field(default_factory=list)
    plot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"windows": [asdict(w) for w in self.windows], "loop": self.loop, "plot": self.plot}


async def _post_all(url: str, examples: Sequence[DemoExample], concurrency: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(e: DemoExample) -> dict[str, Any]:
            async with sem:
                r = await client.post(
                    f"{url}/v1/completions",
                    json={"model": "distillery", "prompt": e.prompt, "max_tokens": 24},
                )
                r.raise_for_status()
                body: dict[str, Any] = r.json()
                return body

        return list(await asyncio.gather(*(one(e) for e in examples)))


def send_window(
    url: str,
    label: str,
    examples: Sequence[DemoExample],
    *,
    concurrency: int = 16,
    pricing: PricingConfig | None = None,
    observer: WindowObserver | None = None,
) -> WindowStats:
    """Sends a window of demo prompts and measures what the cascade did with them.

    Cost model: ``router.pricing.PricingConfig`` (tokens x per-tier price, configurable via
    ``DistillerySettings.pricing``); every request pays the student, escalated ones pay the
    teacher too; teacher-only pays the teacher for all. The response reports the served
    answer's length only, so an escalated request's student part is priced at that length.
    """
    pricing = pricing or PricingConfig()
    started = time.monotonic()
    bodies = asyncio.run(_post_all(url, examples, concurrency))
    if observer is not None:
        observer(label, examples, bodies)
    escalated = [b["distillery"][0]["escalated"] for b in bodies]
    correct = [b["choices"][0]["text"] == e.answer for e, b in zip(examples, bodies, strict=True)]
    costs = [
        pricing.request_cost(
            b["usage"]["prompt_tokens"], b["usage"]["completion_tokens"], student_ran=True, teacher_ran=esc
        )
        for b, esc in zip(bodies, escalated, strict=True)
    ]
    cascade = sum(c.actual for c in costs)
    teacher_only = sum(c.teacher_equivalent for c in costs) or 1.0

    def rate(values: list[bool], skills: Sequence[str]) -> float | None:
        picked = [v for v, e in zip(values, examples, strict=True) if e.skill in skills]
        return sum(picked) / len(picked) if picked else None

    versions = sorted(
        {b["distillery"][0]["model_version"] for b, esc in zip(bodies, escalated, strict=True) if not esc}
    )
    return WindowStats(
        label=label,
        requests=len(bodies),
        escalation_rate=sum(escalated) / len(escalated),
        escalation_rate_new_skills=rate(escalated, NEW_SKILLS),
        escalation_rate_old_skills=rate(escalated, STUDENT_SKILLS),
        accuracy_new_skills=rate(correct, NEW_SKILLS),
        accuracy_old_skills=rate(correct, STUDENT_SKILLS),
        cost_vs_teacher_only=cascade / teacher_only,
        student_versions=versions,
        seconds=round(time.monotonic() - started, 2),
    )


def _background_traffic(url: str, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        batch = sample_examples([*STUDENT_SKILLS, *NEW_SKILLS], 32, rng)
        try:
            asyncio.run(_post_all(url, batch, 4))
        except httpx.HTTPError:
            time.sleep(0.2)


def plot_timeline(report: ScenarioReport, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [w.label for w in report.windows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = range(len(labels))
    series = (
        ("escalation (new skills)", "escalation_rate_new_skills"),
        ("escalation (old skills)", "escalation_rate_old_skills"),
        ("cost vs teacher-only", "cost_vs_teacher_only"),
        ("accuracy (new skills)", "accuracy_new_skills"),
    )
    for name, attr in series:
        values = [getattr(w, attr) for w in report.windows]
        ax.plot(list(x), [v if v is not None else float("nan") for v in values], marker="o", label=name)
    for event in report.loop:
        if event["result"] == "promoted":
            ax.axvline(len(labels) - 1.5, linestyle="--", color="grey")
            ax.annotate(f"refresh -> {event['version']}", (len(labels) - 1.45, 0.3), rotation=90, fontsize=7)
    ax.set_xticks(list(x), labels, rotation=15, fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Distillery: drift, refresh, and the escalations that went away")
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def run_scenario(
    url: str,
    loop: RefreshLoop,
    *,
    drift_requests: int = 3000,
    window: int = 200,
    seed: int = 7,
    plot_path: Path | None = None,
    echo: Any = print,
    max_attempts: int = 2,
    pricing: PricingConfig | None = None,
    observer: WindowObserver | None = None,
) -> ScenarioReport:
    rng = random.Random(seed)
    report = ScenarioReport()

    def window_of(label: str, skills: Sequence[str], n: int) -> WindowStats:
        stats = send_window(url, label, sample_examples(skills, n, rng), pricing=pricing, observer=observer)
        report.windows.append(stats)
        echo(
            f"[{label}] {stats.requests} requests: escalation {stats.escalation_rate:.1%} "
            f"(new skills {_pct(stats.escalation_rate_new_skills)},"
            f" old {_pct(stats.escalation_rate_old_skills)}),"
            f" cost {stats.cost_vs_teacher_only:.1%} of teacher-only, student {stats.student_versions}"
        )
        return stats

    window_of("before drift", STUDENT_SKILLS, window)
    for attempt in range(1, max_attempts + 1):
        # Two thirds of the drifted traffic is on skills the student lacks: ~2,000
        # escalations per window, enough feedback for a refresh (min_new_examples).
        label = "drift" if attempt == 1 else f"drift (more feedback, attempt {attempt})"
        window_of(label, [*NEW_SKILLS, STUDENT_SKILLS[0], *NEW_SKILLS, STUDENT_SKILLS[1]], drift_requests)
        stop = threading.Event()
        traffic = threading.Thread(target=_background_traffic, args=(url, stop, seed + attempt), daemon=True)
        traffic.start()
        try:
            event: LoopEvent = loop.tick()
        finally:
            stop.set()
            traffic.join(60)
        report.loop.append(asdict(event))
        echo(
            f"[loop] trigger={event.trigger} drift={event.drift} -> {event.result} {event.version or ''} "
            f"{event.detail} stages={event.timings_s}"
        )
        if event.result == "promoted":
            break
        # A refused candidate is the gate doing its job; the loop's answer is more feedback
        # (the next refresh trains on everything collected so far).
    time.sleep(3)  # replicas follow the registry within a poll interval
    window_of("after refresh", [*STUDENT_SKILLS, *NEW_SKILLS], window)
    if plot_path is not None:
        report.plot = plot_timeline(report, plot_path)
        echo(f"plot: {report.plot}")
    return report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
