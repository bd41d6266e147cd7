"""The Serve application as a Serve config file (or a KubeRay ``RayService``) names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from distillery.settings import load_settings
from gateway.app import build_app

__all__ = ["app_builder"]


def app_builder(args: dict[str, Any]) -> Application:
    """The ``import_path`` of the Serve config file (``serve deploy deploy/serve/distillery.yaml``,
    or a KubeRay ``RayService``): Serve calls it with the config's ``args``.

    ``args`` are ``DistillerySettings`` fields (nested sections as mappings), e.g.
    ``{"cascade": {"teacher_timeout_s": 10}}``; they win over the environment
    (``DISTILLERY_*``), which wins over the YAML settings file named by the optional
    ``config_file`` arg (or ``DISTILLERY_CONFIG_FILE``), which wins over the optional
    ``preset`` arg (or ``DISTILLERY_PRESET``). Invalid args fail the deploy with pydantic's
    message. Replica counts and autoscaling belong in the Serve config's ``deployments``
    section (``student``, ``teacher``, ``ingress``), which overrides the code.
    """
    overrides = dict(args)
    config_file = overrides.pop("config_file", None)
    preset = overrides.pop("preset", None)
    settings = load_settings(Path(config_file) if config_file else None, preset=preset, **overrides)
    return build_app(settings)
