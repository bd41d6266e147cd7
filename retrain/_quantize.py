"""Quantized candidates: a new registry version from an existing one, gated like any other.

Quantization changes behaviour, so a quantized version goes through what a distilled
candidate does: recalibration (it moves log-probs), the gate against its parent on the
regression suite and held-out teacher answers (agreement, ECE, escalation rate at its own
threshold: one that escalates more than its parent is refused), plus agreement with the
parent's own answers (``GateConfig.min_parent_agreement``); then the live canary.

Two kinds of scheme (``router._quantize``): the torch ones keep the parent's weights and
are quantized by the engine as it loads; the checkpoint ones (``w8a8``, ``w4a16``) are
written here, by llmcompressor in its own environment (``retrain._quantize_job``),
calibrated on the requests the parent answered (``retrain._quantize_calibration``). The
candidate directory keeps the parent's tokenizer, chat template, manifest and files
byte for byte; only the weights and config.json are the quantizer's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError
from common.model_dir import (
    CALIBRATION_FILE,
    ModelManifest,
    ModelSource,
    QuantizationRecord,
    ToolFormat,
    directory_bytes,
)
from deploy import ModelRegistry, RegisteredModel
from feedback import FeedbackStore
from retrain._dataset import Pair
from retrain._gate import BackendFactory, GateReport, recalibration, run_gate, transformers_factory
from retrain._quantize_calibration import calibration_sample, calibration_texts, write_texts
from retrain._suite import build_suite
from retrain.config import GateConfig, QuantizeConfig
from router import AgreementMetric
from router._factory import device_for
from router._quantize import SCHEMES, QuantScheme

JOB = Path(__file__).with_name("_quantize_job.py")
WEIGHT_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json")
"""What a checkpoint scheme's quantizer writes into the candidate; everything else is
the parent's."""

__all__ = ["QuantizeOutcome", "parent_agreement", "quantize_version", "quantized_version_name"]


@dataclass
class QuantizeOutcome:
    version: str
    scheme: str
    passed: bool
    reasons: list[str]
    gate: GateReport
    agreement_with_parent: float
    model: RegisteredModel
    timings_s: dict[str, float]
    bytes: dict[str, int]
    """``parent`` and ``candidate``: each directory's size on disk."""


def quantized_version_name(parent: str, scheme: str) -> str:
    """``<parent>-<scheme>``: the scheme is in every answer's ``model_version`` and in the
    per-version metrics, so dashboards tell a quantized version from its parent."""
    return f"{parent}-{scheme}"


def parent_agreement(ours: Sequence[str], theirs: Sequence[str], agreement: AgreementMetric) -> float:
    """Share of the same requests on which the candidate answers as its parent (greedy)."""
    if not ours:
        return 0.0
    return sum(agreement(o, t) for o, t in zip(ours, theirs, strict=True)) / len(ours)


def quantize_version(
    registry: ModelRegistry,
    version: str,
    scheme: str,
    *,
    workdir: Path,
    gate_config: GateConfig,
    store: FeedbackStore | None = None,
    suite: Sequence[Pair] | None = None,
    scorer: str = "mean_logprob",
    agreement: AgreementMetric | None = None,
    backend_factory: BackendFactory = transformers_factory,
    holdout_fraction: float = 0.1,
    quantize_config: QuantizeConfig | None = None,
) -> QuantizeOutcome:
    """Makes, gates and registers ``<version>-<scheme>``; the caller canaries or promotes it
    when ``passed`` (``distillery models quantize``, the loop's ``quantize_after_promotion``)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown quantization scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    parent = registry.get(version)
    parent_manifest = ModelManifest.load(parent.path)
    if parent_manifest is not None and parent_manifest.quantization is not None:
        raise ConfigError(f"{version} is already quantized ({parent_manifest.quantization.scheme})")
    quant = SCHEMES[scheme]
    config = quantize_config or QuantizeConfig()
    if quant.checkpoint:
        check_quantizer(quant, config)
    agree = agreement or AgreementMetric()
    name = quantized_version_name(version, scheme)
    timings: dict[str, float] = {}
    candidate_dir = workdir / name
    if candidate_dir.exists():
        shutil.rmtree(candidate_dir)
    # The parent's files; its calibration and gate report belong to it, and a checkpoint
    # scheme's weights come from the quantizer.
    skipped = (CALIBRATION_FILE, "gate_report.json", *(WEIGHT_FILES if quant.checkpoint else ()))
    shutil.copytree(parent.path, candidate_dir, ignore=shutil.ignore_patterns(*skipped))
    if suite is None:
        suite = build_suite(gate_config, parent.path, store, holdout_fraction=holdout_fraction)
    manifest = parent_manifest or ModelManifest(version=name)
    record = QuantizationRecord(
        scheme=scheme,
        parent=version,
        calibration=f"torch, at load; gated on the suite ({len(suite)} requests)",
    )
    if quant.checkpoint:
        t0 = time.monotonic()
        record = write_checkpoint(
            quant, config, parent.path, candidate_dir, manifest.tool_format, version, store, holdout_fraction
        )
        timings["quantize"] = time.monotonic() - t0
    manifest.version, manifest.parent = name, version
    manifest.source = ModelSource(kind="quantized", path=str(parent.path), detail={"scheme": scheme})
    manifest.quantization = record
    manifest.save(candidate_dir)
    calibrated_on = f"regression suite + held-out teacher answers ({len(suite)} requests)"
    t0 = time.monotonic()
    gate = run_gate(
        parent.path,
        candidate_dir,
        [],
        suite,
        gate_config,
        scorer=scorer,
        agreement=agree,
        backend_factory=backend_factory,
    )
    timings["gate"] = time.monotonic() - t0
    # Both answered the same suite greedily inside the gate: compare those answers.
    with_parent = parent_agreement(gate.candidate.answers, gate.current.answers, agree)
    reasons = [] if gate.passed else list(gate.reasons)
    if with_parent < gate_config.min_parent_agreement:
        reasons.append(
            f"agreement with the parent {with_parent:.3f} < required {gate_config.min_parent_agreement:.3f}"
        )
    passed = not reasons
    (candidate_dir / "gate_report.json").write_text(
        json.dumps({**gate.to_dict(), "agreement_with_parent": with_parent, "reasons": reasons}, indent=2)
    )
    recalibration(
        gate,
        gate_config,
        scorer=scorer,
        agreement=agree.name,
        n=len(suite),
        source=f"gate recalibration after {scheme} quantization ({calibrated_on})",
    ).save(candidate_dir)
    model = registry.register(
        candidate_dir,
        name,
        {
            "parent": version,
            "quantization": record.model_dump(),
            "agreement_with_parent": round(with_parent, 4),
            "gate": {**gate.to_dict(), "passed": passed, "reasons": reasons or ["all checks passed"]},
        },
    )
    return QuantizeOutcome(
        name,
        scheme,
        passed,
        reasons or ["all checks passed"],
        gate,
        with_parent,
        model,
        {k: round(v, 2) for k, v in timings.items()},
        {"parent": directory_bytes(parent.path), "candidate": directory_bytes(candidate_dir)},
    )


def quantizer_python(config: QuantizeConfig) -> Path:
    return config.python if config.python.is_absolute() else Path.cwd() / config.python


def check_quantizer(scheme: QuantScheme, config: QuantizeConfig, *, device: str | None = None) -> None:
    """Refuses, before anything is copied, a checkpoint scheme this machine cannot write
    (no quantizer environment) or serve (its engine's devices)."""
    why = scheme.unservable_on(device or device_for())
    if why is not None:
        raise ConfigError(f"cannot quantize to {why}")
    python = quantizer_python(config)
    if not python.is_file():
        raise ConfigError(
            f"{scheme.name} is written by llmcompressor in its own environment, and there is none at "
            f"{python} (quantize.python): run `make setup-quantizer`"
        )


def write_checkpoint(
    scheme: QuantScheme,
    config: QuantizeConfig,
    parent_dir: Path,
    candidate_dir: Path,
    tool_format: ToolFormat | None,
    parent_version: str,
    store: FeedbackStore | None,
    holdout_fraction: float,
) -> QuantizationRecord:
    """Runs the quantizer job on a calibration sample of served traffic and moves its
    weights and config.json into ``candidate_dir``."""
    from transformers import AutoTokenizer

    sample = calibration_sample(config, parent_version, parent_dir, store, holdout_fraction=holdout_fraction)
    if not sample.pairs:
        raise ConfigError(
            f"no calibration samples for {parent_version}: the store and its model files are empty"
        )
    tok = AutoTokenizer.from_pretrained(str(parent_dir))
    texts = calibration_texts(tok, sample.pairs, tool_format)
    job_dir = candidate_dir.parent / f"{candidate_dir.name}.job"
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    spec = {
        "scheme": scheme.name,
        "source": str(parent_dir),
        "output": str(job_dir / "out"),
        "samples": str(write_texts(texts, job_dir / "calibration.jsonl")),
        "max_seq_length": config.max_seq_length,
        "smoothing_strength": config.smoothing_strength,
        "group_size": config.group_size,
        "threads": config.threads,
    }
    (job_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    log = job_dir / "job.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_HUB_OFFLINE"] = "1"
    with log.open("w") as out:
        try:
            done = subprocess.run(
                [str(quantizer_python(config)), str(JOB), str(job_dir / "spec.json")],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=config.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ConfigError(
                f"the {scheme.name} quantizer ran past quantize.timeout_s ({config.timeout_s:.0f} s)"
            ) from exc
    report_file = job_dir / "out" / "job_report.json"
    if done.returncode != 0 or not report_file.is_file():
        tail = log.read_text()[-600:].strip().splitlines()
        last = tail[-1] if tail else "no output"
        raise RuntimeError(
            f"the {scheme.name} quantizer failed (exit {done.returncode}): {last} (log: {log})"
        )
    report = json.loads(report_file.read_text())
    for pattern in WEIGHT_FILES:
        for path in (job_dir / "out").glob(pattern):
            shutil.move(str(path), candidate_dir / path.name)
    shutil.rmtree(job_dir)  # kept only when the job failed: its log, spec and samples
    return QuantizationRecord(
        scheme=scheme.name,
        parent=parent_version,
        calibration=sample.description,
        calibration_samples=len(texts),
        method={k: v for k, v in report.items() if k not in ("scheme", "samples")},
    )
