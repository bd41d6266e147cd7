"""The lowest layer: the error base, logging setup and the model-directory contract."""

from common.errors import DistilleryError
from common.logs import configure_logging
from common.model_dir import (
    CALIBRATION_FILE,
    MANIFEST_FILE,
    REFERENCE_FILE,
    SUITE_FILE,
    CalibrationRecord,
    ModelManifest,
    ModelSource,
    TrainingDefaults,
    read_model_version,
    write_json_atomic,
)

__all__ = [
    "CALIBRATION_FILE",
    "MANIFEST_FILE",
    "REFERENCE_FILE",
    "SUITE_FILE",
    "CalibrationRecord",
    "DistilleryError",
    "ModelManifest",
    "ModelSource",
    "TrainingDefaults",
    "configure_logging",
    "read_model_version",
    "write_json_atomic",
]
