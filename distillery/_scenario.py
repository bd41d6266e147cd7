"""``distillery demo scenario``: the whole loop as a story, on the running stack.

Traffic first matches what the student knows (the workload's old routes), then drifts
onto routes it lacks; the refresh loop notices (Evidently), re-distils (TRL), gates,
canaries and promotes; fresh requests of the drifted routes then stay with the student.
Each window's escalation rate, served agreement and cost relative to teacher-only are
printed and plotted. The e2e test and ``bench/real_loop.py`` run exactly this code.

"Agreement" of a served answer: with the ground truth where the workload has one (the
toy skills), else with the teacher's own answer to the same request (asked through the
gateway's ``<name>-teacher`` model; an escalated answer is the teacher's), under the
configured agreement metric.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from distillery._workloads import WorkItem, Workload, answer_of, workload_for
from retrain import LoopEvent
from router import AgreementMetric
from router.pricing import PricingConfig

__all__ = [
    "ScenarioReport",
    "WindowObserver",
    "WindowStats",
    "post_all",
    "run_scenario",
    "send_window",
    "wait_for_version",
]


class Ticks(Protocol):
    """A refresh loop as the scenario drives it: in this process (``RefreshLoop``) or the
    stack's own, asked through the registry (``RemoteLoop``)."""

    def tick(self) -> LoopEvent: ...


WindowObserver = Callable[[str, Sequence[WorkItem], list[dict[str, Any]]], None]
"""Sees each window's requests and the gateway's response bodies (benchmarks use it)."""


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
    agreement: float = 0.0
    """Served answers agreeing with the reference, over the whole window."""


@dataclass
class ScenarioReport:
    windows: list[WindowStats] = field(default_factory=list)
    loop: list[dict[str, Any]] = field(default_factory=list)
    plot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"windows": [asdict(w) for w in self.windows], "loop": self.loop, "plot": self.plot}


async def post_all(
    url: str, items: Sequence[WorkItem], concurrency: int, *, model: str, max_tokens: int
) -> list[dict[str, Any]]:
    """Every item's request (``WorkItem.http``), ``concurrency`` at a time; the bodies in order."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(item: WorkItem) -> dict[str, Any]:
            path, payload = item.http(model, max_tokens)
            async with sem:
                r = await client.post(f"{url}{path}", json=payload)
                r.raise_for_status()
                body: dict[str, Any] = r.json()
                return body

        return list(await asyncio.gather(*(one(i) for i in items)))


def send_window(
    url: str,
    label: str,
    examples: Sequence[WorkItem],
    *,
    workload: Workload | None = None,
    agreement: AgreementMetric | None = None,
    concurrency: int = 16,
    pricing: PricingConfig | None = None,
    observer: WindowObserver | None = None,
    model: str = "distillery",
) -> WindowStats:
    """Sends a window of requests and measures what the cascade did with them.

    Cost model: ``router.pricing.PricingConfig`` (tokens x per-tier price, configurable via
    ``DistillerySettings.pricing``); every request pays the student, escalated ones pay the
    teacher too; teacher-only pays the teacher for all. The response reports the served
    answer's length only, so an escalated request's student part is priced at that length.
    """
    pricing = pricing or PricingConfig()
    workload = workload or workload_for("toy")
    agree = agreement or AgreementMetric()
    started = time.monotonic()
    max_tokens = workload.max_tokens
    bodies = asyncio.run(post_all(url, examples, concurrency, model=model, max_tokens=max_tokens))
    if observer is not None:
        observer(label, examples, bodies)
    answers = [answer_of(b) for b in bodies]
    escalated = [bool(info.get("escalated")) for _, info in answers]
    correct = _agreement(url, examples, answers, escalated, agree, model, max_tokens, concurrency)
    costs = [
        pricing.request_cost(
            b["usage"]["prompt_tokens"], b["usage"]["completion_tokens"], student_ran=True, teacher_ran=esc
        )
        for b, esc in zip(bodies, escalated, strict=True)
    ]
    cascade = sum(c.actual for c in costs)
    teacher_only = sum(c.teacher_equivalent for c in costs) or 1.0

    def rate(values: list[bool], routes: Sequence[str]) -> float | None:
        picked = [v for v, e in zip(values, examples, strict=True) if e.route in routes]
        return sum(picked) / len(picked) if picked else None

    versions = sorted(
        {info["model_version"] for (_, info), esc in zip(answers, escalated, strict=True) if not esc}
    )
    return WindowStats(
        label=label,
        requests=len(bodies),
        escalation_rate=sum(escalated) / len(escalated),
        escalation_rate_new_skills=rate(escalated, workload.new_routes),
        escalation_rate_old_skills=rate(escalated, workload.old_routes),
        accuracy_new_skills=rate(correct, workload.new_routes),
        accuracy_old_skills=rate(correct, workload.old_routes),
        cost_vs_teacher_only=cascade / teacher_only,
        student_versions=versions,
        seconds=round(time.monotonic() - started, 2),
        agreement=sum(correct) / len(correct) if correct else 0.0,
    )


def _agreement(
    url: str,
    items: Sequence[WorkItem],
    answers: Sequence[tuple[str, dict[str, Any]]],
    escalated: Sequence[bool],
    agree: AgreementMetric,
    model: str,
    max_tokens: int,
    concurrency: int,
) -> list[bool]:
    """Served answer vs the ground truth, else vs the teacher's answer to the same request."""
    out: list[bool | None] = [
        agree(text, item.truth) if item.truth is not None else (True if esc else None)
        for item, (text, _), esc in zip(items, answers, escalated, strict=True)
    ]
    ask = [i for i, v in enumerate(out) if v is None]
    if ask:
        bodies = asyncio.run(
            post_all(
                url, [items[i] for i in ask], concurrency, model=f"{model}-teacher", max_tokens=max_tokens
            )
        )
        for i, body in zip(ask, bodies, strict=True):
            out[i] = agree(answers[i][0], answer_of(body)[0])
    return [bool(v) for v in out]


def _background_traffic(url: str, stop: threading.Event, seed: int, workload: Workload, model: str) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        batch = workload.sample(workload.routes, 32, rng)
        try:
            asyncio.run(post_all(url, batch, 4, model=model, max_tokens=workload.max_tokens))
        except httpx.HTTPError:
            time.sleep(0.2)


def plot_timeline(
    report: ScenarioReport,
    path: Path,
    title: str = "Distillery: drift, refresh, and the escalations that went away",
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [w.label for w in report.windows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = range(len(labels))
    series = (
        ("escalation (drifted routes)", "escalation_rate_new_skills"),
        ("escalation (old routes)", "escalation_rate_old_skills"),
        ("cost vs teacher-only", "cost_vs_teacher_only"),
        ("served agreement (drifted routes)", "accuracy_new_skills"),
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
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def run_scenario(
    url: str,
    loop: Ticks,
    *,
    workload: Workload | None = None,
    agreement: AgreementMetric | None = None,
    model: str = "distillery",
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
    wl = workload or workload_for("toy")
    agree = agreement or AgreementMetric()

    def window_of(label: str, routes: Sequence[str], n: int) -> WindowStats:
        stats = send_window(
            url,
            label,
            wl.sample(routes, n, rng),
            workload=wl,
            agreement=agree,
            pricing=pricing,
            observer=observer,
            model=model,
        )
        report.windows.append(stats)
        echo(
            f"[{label}] {stats.requests} requests: escalation {stats.escalation_rate:.1%} "
            f"(drifted routes {_pct(stats.escalation_rate_new_skills)},"
            f" old {_pct(stats.escalation_rate_old_skills)}), served agreement {stats.agreement:.1%}"
            f" (drifted {_pct(stats.accuracy_new_skills)}, old {_pct(stats.accuracy_old_skills)}),"
            f" cost {stats.cost_vs_teacher_only:.1%} of teacher-only, student {stats.student_versions}"
        )
        return stats

    window_of("before drift", wl.old_routes, window)
    # Each old route interleaved with every drifted one: on the toy workload two thirds of
    # the drifted traffic is on skills the student lacks (~2,000 escalations per 3,000
    # requests, enough for a refresh), on the support workload half.
    mix = [r for old in wl.old_routes for r in (*wl.new_routes, old)]
    for attempt in range(1, max_attempts + 1):
        label = "drift" if attempt == 1 else f"drift (more feedback, attempt {attempt})"
        window_of(label, mix, drift_requests)
        stop = threading.Event()
        traffic = threading.Thread(
            target=_background_traffic, args=(url, stop, seed + attempt, wl, model), daemon=True
        )
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
    if report.loop and report.loop[-1]["result"] == "promoted":
        wait_for_version(url, report.loop[-1]["version"])
    window_of("after refresh", wl.routes, window)
    if plot_path is not None:
        report.plot = plot_timeline(report, plot_path)
        echo(f"plot: {report.plot}")
    return report


def wait_for_version(url: str, version: str, timeout_s: float = 60.0) -> None:
    """Until the gateway's student tier reports ``version`` (replicas follow the registry)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=10).json().get("student") == version:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the student tier did not switch to {version} within {timeout_s:g}s")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
