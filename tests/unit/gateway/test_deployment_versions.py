"""Which settings changes restart which replicas: each deployment's Serve version is a hash
of what its replicas read, so ``serve deploy`` of a changed loop setting reloads no model."""

from __future__ import annotations

from typing import Any

from distillery.settings import load_settings
from gateway.app import build_app


def _versions(**overrides: Any) -> dict[str, str | None]:
    """Deployment name -> Serve version, as ``build_app`` pins them (no Ray started)."""
    ingress = build_app(load_settings(student_placement="deployment", **overrides))._bound_deployment
    versions = {ingress.name: ingress.version}
    for arg in ingress.init_args:
        bound = getattr(arg, "_bound_deployment", None)
        if bound is not None:
            versions[bound.name] = bound.version
    return versions


def test_loop_gate_canary_and_retrain_settings_restart_no_replica() -> None:
    before = _versions()
    assert set(before) == {"ingress", "student", "teacher"}
    after = _versions(
        loop={"check_interval_s": 7.0},
        gate={"max_ece": 0.5},
        canary={"share": 0.9},
        retrain={"max_epochs": 2.0},
    )
    assert after == before


def test_a_tier_change_restarts_that_tier_and_the_ingress_only() -> None:
    before = _versions()
    after = _versions(teacher={"num_threads": 2})
    assert after["teacher"] != before["teacher"]
    assert after["student"] == before["student"]
    assert after["ingress"] != before["ingress"]  # it holds the settings it answers with


def test_a_gateway_setting_restarts_the_ingress_but_no_model_server() -> None:
    before = _versions()
    after = _versions(limits={"max_body_bytes": 12345})
    assert after["ingress"] != before["ingress"]
    assert (after["student"], after["teacher"]) == (before["student"], before["teacher"])


def test_ingress_replicas_from_the_settings() -> None:
    app = build_app(load_settings(server={"ingress_replicas": 3}))
    assert app._bound_deployment.name == "ingress" and app._bound_deployment.num_replicas == 3
    assert build_app(load_settings())._bound_deployment.num_replicas == 1


def test_node_roles_place_each_deployment_and_a_second_ingress_adds_the_shared_ledger() -> None:
    roles = {"ingress": "edge", "student": "student", "teacher": "gpu", "ledger": "edge"}
    settings = load_settings(student_placement="deployment", node_roles=roles, server={"ingress_replicas": 2})
    ingress = build_app(settings)._bound_deployment
    placed = {ingress.name: ingress.ray_actor_options["resources"]}
    for arg in ingress.init_args:
        bound = getattr(arg, "_bound_deployment", None)
        if bound is not None:
            placed[bound.name] = bound.ray_actor_options["resources"]
    assert placed == {
        "ingress": {"edge": 0.001},
        "student": {"student": 0.001},
        "teacher": {"gpu": 0.001},
        "ledger": {"edge": 0.001},
    }
    one = build_app(load_settings())._bound_deployment
    assert one.ray_actor_options["resources"] == {} and one.init_args[3] is None  # no ledger
