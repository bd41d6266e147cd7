"""What every command group shares: progress display and the composed collaborators."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from distillery.settings import DistillerySettings

__all__ = ["ProgressFn", "logger", "progress_bar", "registry_of", "roll_out"]

logger = logging.getLogger("distillery")

ProgressFn = Callable[[str, int, int, float | None], None]
"""``(name, done, total, loss)``: a training run reports its loss, other long work
(labelling seeds with the teacher) passes None."""


@contextmanager
def progress_bar() -> Iterator[ProgressFn]:
    """A rich progress bar with counts and an estimate of the time left on a TTY; a log
    line at every tenth of the work otherwise."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
        ) as bar:
            tasks: dict[str, Any] = {}

            def update(name: str, step: int, total: int, loss: float | None) -> None:
                detail = "" if loss is None else f"loss {loss:.4f}"
                if name not in tasks:
                    what = name if loss is None else f"training {name}"
                    tasks[name] = bar.add_task(what, total=total, detail=detail)
                bar.update(tasks[name], completed=step, detail=detail)

            yield update
    else:
        logged: dict[str, int] = {}

        def log(name: str, step: int, total: int, loss: float | None) -> None:
            tenth = step * 10 // max(1, total)
            if tenth <= logged.get(name, -1):
                return
            logged[name] = tenth
            fields: dict[str, Any] = {"task": name, "done": step, "total": total}
            if loss is not None:
                fields["loss"] = round(loss, 5)
            logger.info("progress", extra={"fields": fields})

        yield log


def registry_of(settings: DistillerySettings) -> Any:
    return settings.open_registry()


def roll_out(
    registry: Any, version: str, settings: DistillerySettings, args: argparse.Namespace, *, actor: str
) -> int:
    """A gated candidate goes live: promoted directly (``--no-canary``), else through the
    live canary, which promotes or rolls back on the gateway's metrics (exit 0: promoted)."""
    from deploy import RolloutController
    from distillery._stack import live_evidence

    url = args.gateway_url or f"http://{settings.server.host}:{settings.server.port}"
    rollout = RolloutController(registry, settings.canary, live_evidence(settings, url)).roll_out(
        version, canary=not args.no_canary, actor=actor
    )
    if not rollout.canaried:
        print(f"promoted {version}")
        return 0
    print(
        f"canary verdict: {rollout.verdict} (canary {rollout.candidate.describe()};"
        f" current {rollout.current.describe()})"
    )
    return 0 if rollout.promoted else 1
