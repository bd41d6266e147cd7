"""The ``distillery`` command line: one parser, one ``fn=`` per command, settings read once.

Command groups live beside this module (``_stack``: serve, run, loop, retrain, drift,
config; ``_models``: import and the registry, ``student derive``; ``_demo``: the demo
build and scenario, calibration; ``_feedback``: the stream and API keys). Every command
is ``fn(args, settings)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.errors import DistilleryError
from common.logs import configure_logging
from distillery.cli._demo import add_demo_commands
from distillery.cli._feedback import add_feedback_commands, add_keys_commands
from distillery.cli._models import add_models_commands, add_student_commands
from distillery.cli._stack import add_stack_commands
from distillery.settings import PRESETS, DistillerySettings, load_settings

__all__ = ["main", "settings_from_args"]


def settings_from_args(args: argparse.Namespace) -> DistillerySettings:
    overrides: dict[str, Any] = {}
    if args.models_dir:
        overrides["models_dir"] = args.models_dir
    server = {
        k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None))) if v
    }
    if server:
        overrides["server"] = server
    if args.verbose:
        overrides["verbose"] = True
    return load_settings(args.config, preset=args.preset, **overrides)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distillery", description="A routed LLM gateway that distils itself.")
    p.add_argument("--config", type=Path, default=None, help="YAML settings file")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="bundled configuration: demo (toy models, the default) or smollm2 (SmolLM2-135M-Instruct)",
    )
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's, Serve's and vLLM's INFO lines and the access log too (else: var/logs/)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    add_stack_commands(sub)
    add_demo_commands(sub)
    add_models_commands(sub)
    add_student_commands(sub)
    add_feedback_commands(sub)
    add_keys_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValueError, FileNotFoundError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"distillery: invalid settings: {exc}", file=sys.stderr)
        return 2
    # The services (serve, run, loop) keep a quiet console and write the rest to var/logs/;
    # one-shot commands print as they go and leave no files behind.
    quiet = getattr(args, "services", False) and not settings.verbose
    configure_logging(settings.log_level, verbose=not quiet, logs_dir=settings.logs_dir)
    try:
        return int(args.fn(args, settings))
    except DistilleryError as exc:  # raised on purpose, with a message written for the user
        print(f"distillery: {exc}", file=sys.stderr)
        return 2
