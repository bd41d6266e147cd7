"""The refresh loop: dataset from the feedback store, TRL re-distillation, evaluation gate."""

from retrain._dataset import (
    REFERENCE_FILE,
    DistillDataset,
    Pair,
    build_dataset,
    load_pairs,
    load_reference,
    save_pairs,
)
from retrain._derive import BootstrapResult, bootstrap_student, derive_student, label_with_teacher
from retrain._drift import DriftConfig, DriftResult, check_drift, traffic_sample
from retrain._gate import EvalResult, GateReport, evaluate_model, expected_calibration_error, run_gate
from retrain._labels import LABEL_PRECEDENCE, SecondOpinion, Verifier, VerifierConfig, build_verifiers
from retrain._loop import EVENTS_FILE, EVENTS_LOG, LoopConfig, LoopEvent, LoopMetrics, RefreshLoop, RemoteLoop
from retrain._quantize import QuantizeOutcome, quantize_version, quantized_version_name
from retrain._refresh import (
    Refresher,
    RefreshOutcome,
    check_lineage,
    ensure_registry,
    lineage,
    run_refresh,
    serving_model,
)
from retrain._suite import build_suite, load_suite, save_suite
from retrain._train import TrainResult, distill
from retrain.config import PRETRAINED_TRAINING, DistillConfig, GateConfig, QuantizeConfig
from retrain.errors import DriftCheckError, NotEnoughFeedback, RetrainError

__all__ = [
    "LABEL_PRECEDENCE",
    "SecondOpinion",
    "Verifier",
    "VerifierConfig",
    "build_verifiers",
    "QuantizeOutcome",
    "QuantizeConfig",
    "quantize_version",
    "quantized_version_name",
    "EVENTS_FILE",
    "EVENTS_LOG",
    "RemoteLoop",
    "PRETRAINED_TRAINING",
    "BootstrapResult",
    "bootstrap_student",
    "derive_student",
    "label_with_teacher",
    "REFERENCE_FILE",
    "DistillConfig",
    "DistillDataset",
    "DriftCheckError",
    "DriftConfig",
    "DriftResult",
    "EvalResult",
    "GateConfig",
    "GateReport",
    "LoopConfig",
    "LoopEvent",
    "LoopMetrics",
    "NotEnoughFeedback",
    "Pair",
    "RefreshLoop",
    "RefreshOutcome",
    "Refresher",
    "RetrainError",
    "TrainResult",
    "build_dataset",
    "check_drift",
    "build_suite",
    "save_suite",
    "load_pairs",
    "save_pairs",
    "distill",
    "check_lineage",
    "ensure_registry",
    "lineage",
    "serving_model",
    "evaluate_model",
    "expected_calibration_error",
    "load_reference",
    "load_suite",
    "run_gate",
    "run_refresh",
    "traffic_sample",
]
