"""The ingress runs on the replica's main loop unless told otherwise (bench: hot path)."""

from __future__ import annotations

import pytest

SAME_LOOP = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def _deployments(same_loop: bool, placement: str = "deployment") -> dict[str, dict]:
    from ray.serve._private.build_app import build_app as build_serve_app

    from distillery.settings import load_settings
    from gateway.app import build_app

    settings = load_settings(server={"ingress_same_loop": same_loop}, student_placement=placement)
    built = build_serve_app(build_app(settings), name="distillery", default_runtime_env={})
    return {d.name: d.ray_actor_options or {} for d in built.deployments}


@pytest.mark.parametrize("same_loop", [True, False])
def test_only_the_ingress_gets_the_same_loop_env(same_loop: bool) -> None:
    options = _deployments(same_loop)
    env = options["ingress"].get("runtime_env", {}).get("env_vars", {})
    assert env == (SAME_LOOP if same_loop else {})
    for tier in ("student", "teacher"):  # model replicas keep Serve's defaults
        assert "env_vars" not in options[tier].get("runtime_env", {})


def test_the_student_runs_inside_the_ingress_by_default_and_as_a_deployment_on_request() -> None:
    from distillery.settings import load_settings

    assert load_settings().student_placement == "ingress"
    assert set(_deployments(True, "ingress")) == {"ingress", "teacher"}
    assert set(_deployments(True, "deployment")) == {"ingress", "student", "teacher"}


def test_fast_path_env_is_complete_and_always_written() -> None:
    """Both modes write the switches, so a child ``distillery run`` never inherits its
    parent's mode; the HAProxy frontends are off the consumer's and loop's ports."""
    from distillery.settings import load_settings
    from gateway.app import serve_env

    fast = serve_env(load_settings().server)
    assert fast["RAY_SERVE_ENABLE_HA_PROXY"] == fast["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert {fast["RAY_SERVE_HAPROXY_METRICS_PORT"], fast["RAY_SERVE_HAPROXY_STATS_PORT"]}.isdisjoint(
        {"9101", "9102", "8000"}
    )
    off = serve_env(load_settings(server={"fast_path": False}).server)
    assert off == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    ports = serve_env(load_settings(server={"haproxy_metrics_port": 9555, "haproxy_stats_port": 9556}).server)
    assert (ports["RAY_SERVE_HAPROXY_METRICS_PORT"], ports["RAY_SERVE_HAPROXY_STATS_PORT"]) == (
        "9555",
        "9556",
    )


def test_the_rayservice_pods_start_ray_in_the_fast_path_mode() -> None:
    from pathlib import Path

    import yaml

    from distillery.settings import load_settings
    from gateway.app import serve_env

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy/k8s/rayservice.yaml").read_text())
    cluster = doc["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]
    ]
    for container in containers:
        env = {e["name"]: e.get("value") for e in container["env"]}  # secrets come as valueFrom
        assert serve_env(load_settings().server).items() <= env.items(), container["name"]
