"""``distillery demo build|scenario``, ``distillery calibrate``, and the models a preset
needs before it can serve (``ensure_models``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common.model_dir import CALIBRATION_FILE
from distillery.cli._common import progress_bar, registry_of
from distillery.settings import DistillerySettings

__all__ = ["add_demo_commands", "ensure_models", "print_calibration"]


def _print_accuracy_table(results: list[Any]) -> None:
    from demo import ALL_SKILLS, STUDENT_SKILLS

    skills = [s.name for s in ALL_SKILLS]
    print("\nexact match on a fresh sample (300 prompts per skill):")
    print(f"{'model':<9}" + "".join(f"{s:>9}" for s in skills) + f"{'seconds':>10}")
    for r in results:
        cells = ""
        for s in skills:
            mark = "*" if r.name == "student" and s not in STUDENT_SKILLS else " "
            cells += f"{r.accuracy.get(s, float('nan')) * 100:>7.1f}%{mark}"
        print(f"{r.name:<9}{cells}{r.seconds:>10.1f}" + ("" if r.built else "  (cached)"))
    print("* not among the student's skills: the teacher's to answer, and the loop's to distil.")


def build_demo(settings: DistillerySettings, *, force: bool = False, scale: float = 1.0) -> None:
    from demo import build_demo_models

    models_dir = settings.resolved_models_dir
    started = time.monotonic()
    with progress_bar() as progress:
        results = build_demo_models(models_dir, force=force, scale=scale, progress=progress)
    _print_accuracy_table(results)
    print(f"models in {models_dir.resolve()} ({time.monotonic() - started:.1f}s)")
    if (
        any(r.built for r in results)
        or force
        or not (settings.tier_dir("student") / CALIBRATION_FILE).exists()
    ):
        calibrate(settings)


def ensure_models(settings: DistillerySettings) -> None:
    """Whatever the preset serves, built or imported once and cached."""
    if settings.preset == "smollm2":
        from distillery._real_pair import ensure_real_pair

        with progress_bar() as progress:
            report = ensure_real_pair(settings, announce=print, progress=progress)
        state = "built" if report.built else "cached"
        print(f"real pair ({state}): teacher {report.teacher_version}, student {report.student_version}")
        if report.built:
            print(json.dumps(report.to_dict(), indent=2, default=str))
        return
    build_demo(settings)


def print_calibration(report: Any) -> None:
    print(
        f"\ncalibration on {report.n} labelled prompts"
        f" (scorer {report.scorer}, agreement {report.agreement_metric}):"
    )
    print(
        "  AUROC (student agrees with teacher): "
        + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in report.auroc.items())
    )
    if report.teacher_accuracy is not None:
        print(f"  teacher agrees with the ground truth on {report.teacher_accuracy:.1%} of the sample")
    print(f"  student agrees with teacher on {report.student_agreement:.1%} of the sample")
    print(f"  {'threshold':>12} {'escalation':>11} {'agreement':>10} {'kept acc':>9}")
    step = max(1, len(report.curve) // 12)
    chosen = [p for p in report.curve if p.threshold == report.threshold]
    shown = report.curve[::step] + [report.curve[-1], *chosen]
    for p in sorted({id(p): p for p in shown}.values(), key=lambda p: p.escalation_rate):
        mark = "  <- chosen" if p.threshold == report.threshold else ""
        cells = f"{p.escalation_rate:>10.1%} {p.agreement:>10.1%} {p.student_accuracy_kept:>9.1%}"
        print(f"  {p.threshold:>12.6f} {cells}{mark}")
    print(
        f"chosen threshold {report.threshold:.6f}: escalation {report.escalation_rate:.1%}, "
        f"served agreement {report.agreement:.1%} (target {report.target})"
    )
    for kind, choice in report.commit.items():
        if choice.points:
            print(f"commit points for {kind} answers (each at its cheapest bar that keeps served agreement):")
            head = ("tokens", "bar", "escalation", "agreement", "differ", "decided")
            print("  " + " ".join(f"{h:>{w}}" for h, w in zip(head, (6, 8, 10, 10, 7, 8), strict=True)))
            for c in choice.points:
                print(
                    f"  {c.commit_tokens:>6} {c.bar:>8.4f} {c.escalation_rate:>10.1%} {c.agreement:>10.1%}"
                    f" {c.flips:>7.1%} {c.decided_early:>8.1%}"
                )
        print(f"streamed {kind} answers: {choice.why}")
    if report.path is not None:
        print(f"written to {report.path}")


def calibrate(
    settings: DistillerySettings,
    *,
    n: int = 400,
    target_agreement: float | None = None,
    target_escalation_rate: float | None = None,
    prompts_file: Path | None = None,
    write: bool = True,
) -> int:
    from distillery._calibrate import run_calibration

    report = run_calibration(
        settings,
        n=n,
        target_agreement=target_agreement,
        target_escalation_rate=target_escalation_rate,
        prompts_file=prompts_file,
        write=write,
    )
    print_calibration(report)
    return 0


def cmd_demo_build(args: argparse.Namespace, settings: DistillerySettings) -> int:
    build_demo(settings, force=args.force, scale=args.scale)
    return 0


def cmd_calibrate(args: argparse.Namespace, settings: DistillerySettings) -> int:
    return calibrate(
        settings,
        n=args.n,
        target_agreement=args.target_agreement,
        target_escalation_rate=args.target_escalation_rate,
        prompts_file=args.prompts_file,
        write=not args.dry_run,
    )


def cmd_demo_scenario(args: argparse.Namespace, settings: DistillerySettings) -> int:
    """The story of the loop, on a running ``distillery run`` stack."""
    from distillery._scenario import run_scenario
    from distillery._stack import build_loop
    from distillery._workloads import workload_for
    from retrain import RemoteLoop
    from router import AgreementMetric

    # The stack's own loop runs the refresh (one refresh per registry: a second loop here
    # would train beside it on the same cores); --local-loop for a stack without one.
    loop: Any
    if args.local_loop:
        loop = build_loop(settings)
    else:
        loop = RemoteLoop(registry_of(settings), reason="distillery demo scenario")
    url = f"http://{settings.server.host}:{settings.server.port}"
    out = Path(args.plot or settings.var_dir / "scenario.png")
    report = run_scenario(
        url,
        loop,
        workload=workload_for(settings.workload),
        agreement=AgreementMetric(settings.agreement),
        model=settings.server.served_model_name,
        drift_requests=args.drift_requests,
        plot_path=out,
        pricing=settings.pricing,
    )
    out.with_suffix(".json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return 0


def add_demo_commands(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the bundled demo domain").add_subparsers(
        dest="demo_cmd", required=True
    )
    build = demo.add_parser("build", help="train the demo teacher and student (CPU, ~3 min)")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.add_argument("--scale", type=float, default=1.0, help="scale the step budget (tests)")
    build.set_defaults(fn=cmd_demo_build)
    scenario = demo.add_parser("scenario", help="drift -> refresh -> fewer escalations, on a running stack")
    scenario.add_argument("--drift-requests", type=int, default=3000)
    scenario.add_argument("--plot", help="PNG path (default var/scenario.png)")
    scenario.add_argument(
        "--local-loop",
        action="store_true",
        help="run the refresh in this process (a stack started with `distillery serve`, no loop)",
    )
    scenario.set_defaults(fn=cmd_demo_scenario)

    cal = sub.add_parser("calibrate", help="pick the escalation threshold on a labelled sample")
    target = cal.add_mutually_exclusive_group()
    target.add_argument(
        "--target-agreement",
        type=float,
        help="served agreement with the teacher (default gate.target_agreement)",
    )
    target.add_argument("--target-escalation-rate", type=float, help="largest share sent to the teacher")
    cal.add_argument("--n", type=int, default=400, help="sample size")
    cal.add_argument(
        "--prompts-file",
        type=Path,
        help="JSONL with a 'prompt' or 'messages' per line (default: the configured workload)",
    )
    cal.add_argument("--dry-run", action="store_true", help="report only; do not write calibration.json")
    cal.set_defaults(fn=cmd_calibrate)
