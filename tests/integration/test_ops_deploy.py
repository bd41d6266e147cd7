"""Deployment manifests: the Serve config as Ray itself reads it, the RayService that embeds
it, the consumer/loop Deployments, and the Kafka/PostgreSQL production settings."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from distillery.cli import _parser
from distillery.settings import CONFIG_FILE_ENV, DistillerySettings, load_settings
from feedback.config import KafkaConfig

ROOT = Path(__file__).resolve().parents[2]
SERVE_YAML = ROOT / "deploy" / "serve" / "distillery.yaml"
RAYSERVICE = ROOT / "deploy" / "k8s" / "rayservice.yaml"
WORKERS = ROOT / "deploy" / "k8s" / "feedback-and-loop.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"


POD_DSN = "postgresql://distillery@postgres:5432/distillery"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pods' environment: nothing of this machine's, and the feedback database's DSN
    from its Secret (the Serve config keeps the control plane there)."""
    for key in list(os.environ):
        if key.startswith("DISTILLERY_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DISTILLERY_FEEDBACK__STORE_DSN", POD_DSN)


def _serve_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SERVE_YAML.read_text())
    return doc


def _built(app_cfg: Any) -> Any:
    """What ``serve deploy`` does with one application: import, call the builder with the
    args, build the deployment graph (Ray's own functions, no cluster needed)."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    builder = import_attr(app_cfg.import_path)
    app = call_user_app_builder_with_args_if_necessary(builder, app_cfg.args)
    return build_app(app, name=app_cfg.name, default_runtime_env={})


def test_serve_config_passes_rays_schema_and_builds_the_app() -> None:
    from ray.serve.schema import ServeDeploySchema

    import distillery.app

    config = ServeDeploySchema.model_validate(_serve_doc())
    (app_cfg,) = config.applications
    assert app_cfg.import_path == "distillery.app:app_builder"
    from ray._common.utils import import_attr

    assert import_attr(app_cfg.import_path) is distillery.app.app_builder
    built = _built(app_cfg)
    built.validate_single_fastapi_ingress()
    names = {d.name for d in built.deployments}
    assert built.ingress_deployment_name == "ingress"
    # every override names a real deployment and Ray accepts it on that deployment
    overrides = {d.name: d.model_dump(exclude_unset=True) for d in app_cfg.deployments}
    assert set(overrides) == {"student", "teacher", "ingress"}
    assert names == {"student", "teacher", "ingress", "ledger"}  # two ingress replicas share a ledger
    for dep in built.deployments:
        opts = {k: v for k, v in overrides.get(dep.name, {}).items() if k != "name"}
        applied = dep.options(**opts)
        # Serve replaces ray_actor_options wholesale: an override must not drop the
        # runtime_env the code sets (the ingress's same-loop switches)
        code_env = (dep.ray_actor_options or {}).get("runtime_env", {}).get("env_vars", {})
        new_env = (applied.ray_actor_options or {}).get("runtime_env", {}).get("env_vars", {})
        assert code_env.items() <= new_env.items(), f"{dep.name}: the Serve config drops {code_env}"


def test_serve_config_scaling_bounds() -> None:
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    (app_cfg,) = ServeDeploySchema.model_validate(_serve_doc()).applications
    deps = {d.name: d for d in app_cfg.deployments}
    settings = load_settings(**app_cfg.args)
    for tier in ("student", "teacher"):
        dep = deps[tier]
        assert dep.num_replicas == "auto"
        assert isinstance(dep.autoscaling_config, dict) and isinstance(dep.max_ongoing_requests, int)
        auto = AutoscalingConfig(**dep.autoscaling_config)
        assert 1 <= auto.min_replicas <= auto.max_replicas
        # a replica must not refuse work before the autoscaler sees it as loaded
        assert auto.target_ongoing_requests is not None
        assert auto.target_ongoing_requests < dep.max_ongoing_requests
        # torch threads per replica = the CPUs Ray reserves for it
        assert dep.ray_actor_options.num_cpus == getattr(settings, tier).num_threads
    assert (
        AutoscalingConfig(**deps["student"].model_dump(exclude_unset=True)["autoscaling_config"]).min_replicas
        >= 2
    )
    # The ingress replicas the settings build (the ledger is sized for them) are the ones Serve runs.
    assert deps["ingress"].num_replicas == settings.server.ingress_replicas == 2
    assert "autoscaling_config" not in deps["ingress"].model_dump(exclude_unset=True)
    # The production topology: every part placed by a role, no shared volume.
    assert settings.control_store == "database" and settings.control_dsn == POD_DSN
    assert (settings.registry_url or "").startswith("s3://")
    roles = settings.node_roles
    assert (roles.ingress, roles.ledger, roles.student, roles.teacher, roles.trainer) == (
        "ingress",
        "ingress",
        "student",
        "teacher",
        "trainer",
    )


def test_serve_args_are_settings_and_win_over_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.serve.schema import ServeDeploySchema

    (app_cfg,) = ServeDeploySchema.model_validate(_serve_doc()).applications
    args = dict(app_cfg.args)
    settings = DistillerySettings(**args)
    assert settings.feedback.kafka.partitions == 6 and settings.feedback.kafka.replication_factor == 3
    assert settings.resolved_registry_dir == Path("/var/lib/distillery/registry")
    assert settings.pricing.teacher.input_per_mtok > settings.pricing.student.input_per_mtok
    # secrets and brokers come from the pods' environment, merged under the args
    monkeypatch.setenv("DISTILLERY_FEEDBACK__KAFKA__BOOTSTRAP", "kafka-0:9092")
    monkeypatch.setenv("DISTILLERY_CASCADE__TEACHER_TIMEOUT_S", "5")
    file = tmp_path / "settings.yaml"
    file.write_text("log_level: DEBUG\ncascade: {teacher_timeout_s: 7, fallback_threshold: 0.5}\n")
    from distillery.app import app_builder

    app_builder({**args, "config_file": str(file)})  # builds (no Ray cluster needed)
    assert CONFIG_FILE_ENV not in os.environ  # settings are never written back into the env
    merged = load_settings(file, **args)
    assert merged.feedback.kafka.bootstrap == "kafka-0:9092"  # env, beside the args' kafka section
    assert merged.cascade.teacher_timeout_s == 20  # args > env > file
    assert merged.cascade.fallback_threshold == 0.5 and merged.log_level == "DEBUG"  # file only


def test_serve_builder_rejects_invalid_args_with_pydantics_message() -> None:
    from distillery.app import app_builder

    with pytest.raises(ValidationError, match="scorer"):
        app_builder({"cascade": {"scorer": "vibes"}})


def test_rayservice_embeds_the_serve_config_and_has_room_for_max_replicas() -> None:
    import ray

    doc = yaml.safe_load(RAYSERVICE.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    assert yaml.safe_load(doc["spec"]["serveConfigV2"]) == _serve_doc()
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    deps = {d["name"]: d for d in _serve_doc()["applications"][0]["deployments"]}

    def role_of(params: dict[str, str]) -> str:
        # KubeRay passes rayStartParams.resources to `ray start --resources` as it is written.
        (role,) = json.loads(json.loads(params["resources"]))
        return str(role)

    groups = {role_of(g["rayStartParams"]): g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"student", "teacher", "trainer"}

    def cpus(tier: str, bound: str) -> float:
        d = deps[tier]
        return float(d["ray_actor_options"]["num_cpus"] * d["autoscaling_config"][bound])

    for tier in ("student", "teacher"):  # each tier's replicas fit its own role's group
        per_pod = int(groups[tier]["rayStartParams"]["num-cpus"])
        assert cpus(tier, "max_replicas") <= int(groups[tier]["maxReplicas"]) * per_pod
        assert cpus(tier, "min_replicas") <= int(groups[tier]["minReplicas"]) * per_pod
    assert groups["trainer"]["minReplicas"] == 0  # the autoscaler starts one for a refresh
    head = cluster["headGroupSpec"]
    assert role_of(head["rayStartParams"]) == "ingress"
    assert int(head["rayStartParams"]["num-cpus"]) >= 1  # the ingress, controller and proxy live here
    # No pod mounts a shared volume: versions come from object storage, state from the database.
    pods = [head["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert all("persistentVolumeClaim" not in v for p in pods for v in p["spec"]["volumes"])
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert _serve_doc()["http_options"]["port"] in ports


def test_consumer_and_loop_deployments_run_real_cli_commands_scraped_by_prometheus() -> None:
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(WORKERS.read_text())}
    prom = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for name, job, fn in (
        ("distillery-feedback-consumer", "distillery-feedback-consumer", "cmd_feedback_consume"),
        ("distillery-loop", "distillery-loop", "cmd_loop"),
    ):
        (container,) = docs[name]["spec"]["template"]["spec"]["containers"]
        args = _parser().parse_args(container["command"][1:])
        assert args.fn.__name__ == fn
        assert container["ports"][0]["containerPort"] == args.metrics_port
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["port"] == args.metrics_port
        service = sd["names"][0].split(".")[0]
        assert docs[service]["spec"]["clusterIP"] == "None"  # headless: one target per pod
        assert docs[service]["spec"]["selector"] == docs[name]["spec"]["selector"]["matchLabels"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["DISTILLERY_SERVER__HOST"] == "0.0.0.0"  # the metrics listener's bind address
    loop = docs["distillery-loop"]["spec"]
    assert loop["replicas"] == 1 and loop["strategy"]["type"] == "Recreate"
    loop_args = _parser().parse_args(loop["template"]["spec"]["containers"][0]["command"][1:])
    assert loop_args.gateway_url.startswith("http://distillery-serve-svc.")
    assert jobs["distillery-gateway"]["static_configs"][0]["targets"] == [
        "distillery-serve-svc.distillery.svc:8000"
    ]


def test_kafka_topics_match_the_code_and_survive_one_broker() -> None:
    topics = {
        d["metadata"]["name"]: d["spec"]
        for d in yaml.safe_load_all((ROOT / "deploy/kafka/topics.yaml").read_text())
    }
    kafka = KafkaConfig()
    assert set(topics) == {kafka.topic, kafka.sample_topic, kafka.dead_letter_topic}
    consumers = next(
        d
        for d in yaml.safe_load_all(WORKERS.read_text())
        if d["metadata"]["name"] == "distillery-feedback-consumer"
    )
    for name, spec in topics.items():
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == 2, name
    assert topics[kafka.topic]["partitions"] >= consumers["spec"]["replicas"]
    # static assignment: every pod knows how many instances share the partitions, and which it is
    assert consumers["kind"] == "StatefulSet"
    (container,) = consumers["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert (
        int(env["DISTILLERY_FEEDBACK__KAFKA__CONSUMER_INSTANCES"]["value"]) == consumers["spec"]["replicas"]
    )
    ordinal = env["DISTILLERY_FEEDBACK__KAFKA__CONSUMER_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert ordinal == "metadata.labels['apps.kubernetes.io/pod-index']"
    serve_kafka = _serve_doc()["applications"][0]["args"]["feedback"]["kafka"]
    assert serve_kafka["partitions"] == topics[kafka.topic]["partitions"]
    assert serve_kafka["replication_factor"] == topics[kafka.topic]["replicas"]
    # the producer's side of the bargain: acks=all (min.insync.replicas means nothing otherwise)
    assert 'acks="all"' in (ROOT / "feedback" / "_producer.py").read_text()
    day_ms = 24 * 3600 * 1000
    assert topics[kafka.topic]["config"]["retention.ms"] == 14 * day_ms
    assert topics[kafka.dead_letter_topic]["config"]["retention.ms"] == 30 * day_ms


def _pg_settings() -> dict[str, str]:
    out = {}
    for line in (ROOT / "deploy/postgres/postgresql.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, value = (part.strip() for part in line.split("=", 1))
            out[key] = value
    return out


def test_postgres_settings_are_real_parameters_of_the_installed_server() -> None:
    settings = _pg_settings()
    assert settings["fsync"] == "on" and settings["synchronous_commit"] == "on"
    consumers_max = 6  # topic partitions: no more consumers than that do work
    assert (
        int(settings["max_connections"]) - int(settings["superuser_reserved_connections"]) > consumers_max + 2
    )
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres")) or [shutil.which("postgres") or ""]
    if not found[-1]:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql package as root)")
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    out = subprocess.run(
        [*prefix, found[-1], "--describe-config"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    known = {line.split("\t")[0]: line.split("\t")[3] for line in out.splitlines() if "\t" in line}
    for key, value in settings.items():
        assert key in known, f"{key} is not a PostgreSQL parameter"
        if known[key] == "BOOLEAN":
            assert value in {"on", "off"}, key
