"""The model-directory contract: what Distillery keeps beside a Hugging Face model.

A model directory is a standard Hugging Face directory (``config.json``, weights,
tokenizer) plus, all optional:

* ``distillery_model.json`` (``ModelManifest``): version, role, where the weights came
  from (a GGUF file, a Hugging Face directory, a derivation, a distillation), lineage and
  the answer budget the model's workload needs;
* ``calibration.json`` (``CalibrationRecord``): the threshold calibrated for *this*
  version (thresholds belong to one model);
* ``train_reference.jsonl``: a sample of what the model was trained on (replayed by the
  retrainer, the drift checks' reference);
* ``regression_suite.jsonl``: labelled requests the gate judges every candidate on.

Every reader and writer goes through this module, so the file names and schemas are
defined once. Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "directory_bytes",
    "CALIBRATION_FILE",
    "MANIFEST_FILE",
    "REFERENCE_FILE",
    "SUITE_FILE",
    "CalibrationRecord",
    "CommitRecord",
    "ModelManifest",
    "ModelSource",
    "QuantizationRecord",
    "ToolFormat",
    "TrainingDefaults",
    "read_model_version",
    "write_json_atomic",
]

MANIFEST_FILE = "distillery_model.json"
CALIBRATION_FILE = "calibration.json"
REFERENCE_FILE = "train_reference.jsonl"
SUITE_FILE = "regression_suite.jsonl"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Writes JSON so a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ModelSource(BaseModel):
    """Where a directory's weights came from."""

    kind: Literal["gguf", "hf", "derived", "demo", "distilled", "bootstrapped", "quantized"]
    path: str | None = None
    sha256: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class TrainingDefaults(BaseModel):
    """The hyper-parameters a model's builder found right for re-training it.

    A from-scratch toy and a pretrained model want very different learning rates (the
    demo student: 1e-3 for 600 steps; the SmolLM2-derived student: 3e-4 for ~150 steps,
    where 1e-3 wrecks pretrained weights), so the model directory says, and the retrainer
    uses these unless its config sets them."""

    steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0.0)
    warmup_steps: int | None = Field(default=None, ge=0)


SMOLLM2_TOOL_PROMPT = (
    "You are an expert in composing functions. You are given a question and a set of possible"
    " functions. Based on the question, you will need to make one or more function/tool calls to"
    " achieve the purpose. If none of the functions can be used, point it out and refuse to answer."
    " If the given question lacks the parameters required by the function, also point it out.\n\n"
    "You have access to the following tools:\n<tools>{tools}</tools>\n\n"
    "The output MUST strictly adhere to the following format, and NO other text MUST be included.\n"
    "The example format is as follows. Please make sure the parameter type is correct. If no"
    " function call is needed, please make the tool calls an empty list '[]'.\n"
    '<tool_call>[\n{"name": "func_name1", "arguments": {"argument1": "value1", "argument2":'
    ' "value2"}},\n... (more tool calls as required)\n]</tool_call>'
)
"""SmolLM2-Instruct's tool-calling system prompt (the format it was trained on)."""


class ToolFormat(BaseModel):
    """How ``tools``, tool calls and tool results are rendered for this model.

    ``style``: ``native`` hands them to the chat template (``apply_chat_template(tools=...)``;
    for templates with a tool section), ``prompt`` renders them as plain turns the template
    already knows (the tools in the system turn, calls as ``call_open`` + JSON list +
    ``call_close`` in the assistant turn, results as ``response_role`` turns), ``auto``
    picks ``native`` when the template mentions ``tools``. Kept in the manifest, so each
    model directory says how it was trained to call tools."""

    style: Literal["auto", "native", "prompt"] = "auto"
    system_prompt: str = SMOLLM2_TOOL_PROMPT
    """``{tools}`` is replaced by the tools' JSON list; the request's own system turn, if
    any, comes first."""
    call_open: str = "<tool_call>"
    call_close: str = "</tool_call>"
    response_role: Literal["user", "tool"] = "user"
    response_open: str = "<tool_response>"
    response_close: str = "</tool_response>"


class QuantizationRecord(BaseModel):
    """How a quantized version differs from its parent (``router._quantize``).

    A torch scheme's directory holds the parent's weights and the engine quantizes them as
    it loads (deterministically, so every replica serves the same model); a checkpoint
    scheme's holds the quantizer's compressed-tensors weights."""

    scheme: str
    parent: str
    calibration: str = ""
    """What the quantizer calibrated on (checkpoint schemes: the served prompts drawn from
    the store, by route) or, for a torch scheme, what the candidate was gated on."""
    calibration_samples: int | None = None
    method: dict[str, Any] = Field(default_factory=dict)
    """The quantizer's settings and package versions (checkpoint schemes)."""


class ModelManifest(BaseModel):
    """``distillery_model.json``. Unknown keys are kept (older and newer writers coexist).

    ``max_new_tokens`` is the answer budget the model's workload needs: calibration, the
    gate and the drift reference generate with it instead of a hard-coded length.
    """

    model_config = ConfigDict(extra="allow")

    version: str
    role: Literal["teacher", "student"] | None = None
    source: ModelSource | None = None
    parent: str | None = None
    architecture: str | None = None
    num_layers: int | None = None
    params: int | None = None
    chat: bool = False
    """The model has a chat template and its workload is chat requests."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    training: TrainingDefaults | None = None
    quantization: QuantizationRecord | None = None
    label_sources: dict[str, int] = Field(default_factory=dict)
    """Training examples per label source (correction, teacher_agreed, teacher, audit,
    replay) of the dataset this version was distilled on (``retrain._labels``)."""
    label_rejections: dict[str, int] = Field(default_factory=dict)
    """Labels that dataset did not use, by reason."""
    tool_format: ToolFormat | None = None
    """How tools are rendered for this model (``None``: the defaults, ``style: auto``)."""
    created: float = Field(default_factory=time.time)

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest | None:
        path = model_dir / MANIFEST_FILE
        if not path.is_file():
            return None
        return cls.model_validate_json(path.read_text())

    def save(self, model_dir: Path) -> Path:
        path = model_dir / MANIFEST_FILE
        write_json_atomic(path, self.model_dump(mode="json", exclude_none=True))
        return path


class CommitRecord(BaseModel):
    """A calibrated commit point: decide at ``tokens`` tokens, serving a prefix that
    scores at least ``bar`` (what ``router._early.calibrate_commit`` chose, and why)."""

    tokens: int = Field(ge=1)
    bar: float = Field(ge=0.0, le=1.000001)
    escalation_rate: float | None = None
    agreement: float | None = None
    flips: float | None = None
    n: int | None = None


class CalibrationRecord(BaseModel):
    """``calibration.json``: the threshold calibrated for one model version."""

    model_config = ConfigDict(extra="allow")

    scorer: str
    threshold: float = Field(ge=0.0, le=1.000001)
    target: dict[str, float] = Field(default_factory=dict)
    escalation_rate: float | None = None
    agreement: float | None = None
    agreement_metric: str | None = None
    n: int | None = None
    source: str = ""
    student_version: str | None = None
    teacher_version: str | None = None
    student_agreement: float | None = None
    teacher_accuracy: float | None = None
    auroc: dict[str, float | None] = Field(default_factory=dict)
    curve: list[dict[str, float]] = Field(default_factory=list)
    by_kind: dict[str, float] = Field(default_factory=dict)
    """Thresholds calibrated for one output kind (``json``, ``tool_call``): constrained
    decoding moves log-probs, so a kind with enough calibration answers gets its own bar;
    a kind without one uses ``threshold``."""
    by_route: dict[str, float] = Field(default_factory=dict)
    """Thresholds calibrated on one route's answers (the request's route label): a refresh
    moves routes' confidences apart (one it trained on gains, an old one it did not may
    lose a little while answering as well), and one bar for all of them escalates the
    less confident route's right answers. A route without one uses its kind's bar."""
    commit: dict[str, CommitRecord] = Field(default_factory=dict)
    """Per output kind, where a streamed answer is decided (``router._early``): a kind
    without one is decided on the whole answer before any text leaves."""
    created: float = Field(default_factory=time.time)

    def threshold_for(self, kind: str, route: str | None = None) -> float:
        """The route's own bar, else the output kind's, else the overall one."""
        if route is not None and route in self.by_route:
            return self.by_route[route]
        return self.by_kind.get(kind, self.threshold)

    @classmethod
    def load(cls, model_dir: Path) -> CalibrationRecord | None:
        path = model_dir / CALIBRATION_FILE
        if not path.is_file():
            return None
        return cls.model_validate_json(path.read_text())

    def save(self, model_dir: Path) -> Path:
        path = model_dir / CALIBRATION_FILE
        write_json_atomic(path, self.model_dump(mode="json"))
        return path


def read_model_version(model_dir: Path) -> str:
    """The version a Distillery directory declares, else the directory's name."""
    path = model_dir / MANIFEST_FILE
    if path.is_file():
        version = json.loads(path.read_text()).get("version")
        if isinstance(version, str) and version:
            return version
    return model_dir.name


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (what a version costs on disk and to ship)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
