"""Structured (JSON-lines) logs when not on a TTY, readable ones when a person watches.

Quiet by default (``verbose=False``): the console carries Distillery's own INFO lines and
everyone's warnings; everything at INFO, Ray's, Serve's and vLLM's included, goes to files
under ``logs_dir`` (``distillery.log``, ``vllm.log``; ``gateway.app.start_ray`` puts
Serve's and Ray's beside them), where an operator looks when something went wrong.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["configure_logging"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            payload.update(extra)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


OWN_LOGGERS = ("distillery", "gateway", "router", "feedback", "retrain", "deploy", "demo", "common", "bench")
"""The product's own loggers: their INFO lines are the events a console shows."""


def _vllm_logging(filename: Path) -> dict[str, Any]:
    """The engine's narration to ``filename``: its own processes (EngineCore, Ray replicas)
    read this config through the environment, so their INFO lines skip the console."""
    fmt = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": fmt}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "formatter": "plain", "filename": str(filename)}
        },
        "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }


class _ConsoleFilter(logging.Filter):
    """INFO and above from the product, WARNING and above from everyone else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name.split(".", 1)[0] in OWN_LOGGERS


def configure_logging(level: str = "INFO", *, verbose: bool = True, logs_dir: Path | None = None) -> None:
    """``verbose=False`` with a ``logs_dir``: the quiet console described above."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if not verbose and logs_dir is not None:
        _quiet_console(handler, root, logs_dir)
    # Client libraries narrate every reconnect at INFO; their warnings are what ops need.
    for noisy in ("kafka", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _quiet_console(console: logging.Handler, root: logging.Logger, logs_dir: Path) -> None:
    logs_dir.mkdir(parents=True, exist_ok=True)
    console.addFilter(_ConsoleFilter())
    file = logging.FileHandler(logs_dir / "distillery.log")
    file.setFormatter(_JsonFormatter())
    root.addHandler(file)
    config = logs_dir / "vllm-logging.json"
    config.write_text(json.dumps(_vllm_logging((logs_dir / "vllm.log").resolve()), indent=2))
    # Read by every process started from here on (the engine's own, Ray's workers); an
    # operator's own setting wins.
    os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", str(config.resolve()))
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # the engine's C++ notices
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # libraries' deprecations
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.captureWarnings(True)  # the rest reach the file (and the console, as WARNING)
