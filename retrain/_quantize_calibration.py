"""What a checkpoint quantizer calibrates on: the requests the student actually answers.

GPTQ and SmoothQuant fit their scales to the activations of a calibration sample, so the
sample should be the traffic the quantized version will serve, rendered as it is served.
The store holds it: every escalation and a known share of the served answers carry the
request (chat turns, tools, ``response_format``) and the student's own answer. Drawn from
the training split only (the gate judges on the held-out one), the parent's own answers
first, round-robin over routes in a stable order (the same store gives the same sample).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.model_dir import ToolFormat
from feedback import EscalationEvent, FeedbackStore
from retrain._dataset import Pair, load_pairs, load_reference
from retrain._suite import load_suite
from retrain.config import QuantizeConfig

__all__ = ["CalibrationSample", "calibration_sample", "calibration_texts", "round_robin", "write_texts"]


@dataclass(frozen=True)
class CalibrationSample:
    pairs: list[Pair]
    description: str
    """Where the sample came from, for the version's ``QuantizationRecord``."""


def _stable(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def round_robin(pairs: Iterable[Pair], n: int) -> list[Pair]:
    """Up to ``n`` pairs, one route at a time in turn, each route's in a stable order."""
    by_route: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_route.setdefault(pair.skill or "", []).append(pair)
    queues = [sorted(v, key=lambda p: _stable(p.key)) for _, v in sorted(by_route.items())]
    out: list[Pair] = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out[:n]


def _answered(events: Sequence[EscalationEvent]) -> list[Pair]:
    """One pair per distinct request the student answered (its answer as the completion)."""
    seen: set[str] = set()
    pairs: list[Pair] = []
    for event in events:
        answer = (event.student_answer or "").strip()
        if not answer:
            continue
        pair = Pair.from_event(event, answer, source="served")
        if pair.key not in seen:
            seen.add(pair.key)
            pairs.append(pair)
    return pairs


def calibration_sample(
    config: QuantizeConfig,
    parent_version: str,
    parent_dir: Path,
    store: FeedbackStore | None,
    *,
    holdout_fraction: float = 0.1,
) -> CalibrationSample:
    n = config.calibration_samples
    if config.calibration_file is not None:
        if not config.calibration_file.is_file():
            raise ConfigError(f"quantize.calibration_file {config.calibration_file} does not exist")
        pairs = round_robin(load_pairs(config.calibration_file, "calibration"), n)
        return CalibrationSample(pairs, f"{len(pairs)} prompts from {config.calibration_file.name}")
    drawn: list[Pair] = []
    if store is not None:
        events = [
            e
            for kind in ("sample", "escalation")
            for e in store.events(kind=kind, split="train", holdout_fraction=holdout_fraction)
        ]
        own = [e for e in events if e.student_version == parent_version]
        drawn = round_robin(_answered(own), n)
        if len(drawn) < n:  # answers of earlier versions: the same traffic, older answers
            keys = {p.key for p in drawn}
            others = [p for p in _answered(events) if p.key not in keys]
            drawn += round_robin(others, n - len(drawn))
    routes = sorted({p.skill or "-" for p in drawn})
    if len(drawn) >= config.min_store_samples:
        where = f"{len(routes)} routes: {', '.join(routes)}"
        return CalibrationSample(drawn, f"{len(drawn)} served prompts from the feedback store ({where})")
    keys = {p.key for p in drawn}
    files = [p for p in load_reference(parent_dir) + load_suite(parent_dir) if p.key not in keys]
    filled = round_robin(files, n - len(drawn))
    return CalibrationSample(
        drawn + filled,
        f"{len(drawn)} served prompts from the feedback store (fewer than {config.min_store_samples}) "
        f"and {len(filled)} from the parent's training reference and regression suite",
    )


def calibration_texts(tokenizer: Any, pairs: Sequence[Pair], tool_format: ToolFormat | None) -> list[str]:
    """Each pair as the model reads it when it answers: the prompt rendered by the serving
    template (``router.render_prompt``: tools, tool turns, a forced call's opener), then
    the answer and the end-of-text token."""
    eos = tokenizer.eos_token or ""
    return [p.served_prompt(tokenizer, tool_format) + p.completion + eos for p in pairs]


def write_texts(texts: Sequence[str], path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    return path
