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

ProgressFn = Callable[[str, int, int, float], None]


@contextmanager
def progress_bar() -> Iterator[ProgressFn]:
    """A rich progress bar on a TTY; a log line every 100 steps otherwise."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
        ) as bar:
            tasks: dict[str, Any] = {}

            def update(name: str, step: int, total: int, loss: float) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(f"training {name}", total=total, loss=loss)
                bar.update(tasks[name], completed=step, loss=loss)

            yield update
    else:

        def log(name: str, step: int, total: int, loss: float) -> None:
            if step % 100 == 0 or step == total:
                logger.info(
                    "training",
                    extra={"fields": {"model": name, "step": step, "total": total, "loss": round(loss, 5)}},
                )

        yield log


def registry_of(settings: DistillerySettings) -> Any:
    from deploy import ModelRegistry

    return ModelRegistry(settings.resolved_registry_dir)


def roll_out(
    registry: Any, version: str, settings: DistillerySettings, args: argparse.Namespace, *, actor: str
) -> int:
    """A gated candidate goes live: promoted directly (``--no-canary``), else through the
    live canary, which promotes or rolls back on the gateway's metrics (exit 0: promoted)."""
    import httpx

    from deploy import CanaryController

    if args.no_canary:
        registry.promote(version, reason="gate passed (no canary)", actor=actor)
        print(f"promoted {version}")
        return 0
    url = args.gateway_url or f"http://{settings.server.host}:{settings.server.port}"
    controller = CanaryController(
        registry, lambda: httpx.get(f"{url}/metrics", timeout=10).text, settings.canary
    )
    verdict, cur, can = controller.run(version)
    print(f"canary verdict: {verdict} (canary {can.describe()}; current {cur.describe()})")
    return 0 if verdict == "promote" else 1
