"""The ingress runs on the replica's main loop unless told otherwise (bench: hot path)."""

from __future__ import annotations

import pytest

SAME_LOOP = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def _deployments(same_loop: bool) -> dict[str, dict]:
    from ray.serve._private.build_app import build_app as build_serve_app

    from distillery.settings import load_settings
    from gateway.app import build_app

    settings = load_settings(server={"ingress_same_loop": same_loop})
    built = build_serve_app(build_app(settings), name="distillery", default_runtime_env={})
    return {d.name: d.ray_actor_options or {} for d in built.deployments}


@pytest.mark.parametrize("same_loop", [True, False])
def test_only_the_ingress_gets_the_same_loop_env(same_loop: bool) -> None:
    options = _deployments(same_loop)
    env = options["ingress"].get("runtime_env", {}).get("env_vars", {})
    assert env == (SAME_LOOP if same_loop else {})
    for tier in ("student", "teacher"):  # model replicas keep Serve's defaults
        assert "env_vars" not in options[tier].get("runtime_env", {})
