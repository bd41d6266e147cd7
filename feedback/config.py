"""Feedback settings: the Kafka side, the store, the spool and redaction."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator

__all__ = ["FeedbackConfig", "KafkaConfig"]


class KafkaConfig(BaseModel):
    """Where events go.

    Parameters:
        bootstrap (`str | None`, defaults to None): ``host:port[,host:port]`` of the Kafka
            cluster (``DISTILLERY_FEEDBACK__KAFKA__BOOTSTRAP``). None: ``make run`` starts
            the embedded Tansu broker and fills this in.
        topic (`str`, defaults to ``distillery.escalations``): escalation events.
        sample_topic (`str`, defaults to ``distillery.samples``): sampled confident answers.
        dead_letter_topic (`str`, defaults to ``distillery.escalations.dlq``).
        partitions (`int`, defaults to 1), replication_factor (`int`, defaults to 1):
            used when topics are created on start; production: 6 and 3.
        consumer_group (`str`, defaults to ``distillery-feedback``): where the consumer
            commits its offsets (partitions are assigned statically, not by the group).
        consumer_instances (`int`, defaults to 1), consumer_index (`int`, defaults to 0):
            consumer ``index`` of ``instances`` reads the partitions ``p`` with
            ``p % instances == index`` (a StatefulSet ordinal fits).
        request_timeout_ms, max_block_ms, delivery_timeout_ms (`int`): producer bounds;
            small so an outage is noticed (and spooled) in seconds, not minutes.
        batch_size (`int`, defaults to 524288): the producer's record batch per partition,
            in bytes. One delivery step (500 events, ~350 KB) fits one batch; at kafka-python's
            16 KB default every ~20 events made a batch, a sender wake-up and a request
            entry, which capped the producer near 5,000 events/s on 2 cores (11,800/s
            here). At most 1,000,000: under a broker's default ``message.max.bytes`` (1 MiB).
        collect_ms (`int`, defaults to 200): after an event arrives, how long the delivery
            thread keeps collecting before it sends (or until 500 are queued). Each
            delivery step is a send, a flush and a wait for the broker's acks, so at a
            serving gateway's trickle (a few events a request in ten) one step per event
            cost more of the ingress's CPU than the events themselves; delivery lag grows
            by at most this much.
    """

    bootstrap: str | None = None
    topic: str = "distillery.escalations"
    sample_topic: str = "distillery.samples"
    dead_letter_topic: str = "distillery.escalations.dlq"
    partitions: int = Field(default=1, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    consumer_group: str = "distillery-feedback"
    request_timeout_ms: int = Field(default=5000, ge=100)
    max_block_ms: int = Field(default=2000, ge=10)
    delivery_timeout_ms: int = Field(default=10000, ge=100)
    linger_ms: int = Field(default=5, ge=0)
    batch_size: int = Field(default=512 * 1024, ge=1024, le=1_000_000)
    collect_ms: int = Field(default=200, ge=0, le=5000)
    consumer_instances: int = Field(default=1, ge=1)
    consumer_index: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _index_within_instances(self) -> KafkaConfig:
        if self.consumer_index >= self.consumer_instances:
            raise ValueError(
                f"consumer_index {self.consumer_index} must be below "
                f"consumer_instances {self.consumer_instances}"
            )
        return self


class FeedbackConfig(BaseModel):
    """The feedback stream as a whole.

    Parameters:
        enabled (`bool`, defaults to True): produce escalation events at all.
        kafka (`KafkaConfig`): the broker side.
        store_dsn (`str | None`, defaults to None): ``postgresql://...`` or a SQLite path;
            None means ``<var_dir>/feedback.db``.
        spool_dir (`Path | None`, defaults to None): None means ``<var_dir>/spool``.
        queue_size (`int`, defaults to 10000): in-memory events before spilling to disk.
        sample_rate (`float`, defaults to 0.1): share of confident answers also logged; the
            drift check's window is these plus escalations thinned to the same rate, so
            it needs ``min_rows / sample_rate`` requests per window (1,000 at defaults).
        route_labeler (`str | None`): ``module:function`` mapping a prompt's text (for
            chat, the last user turn) to a route label or None; a request's own
            ``metadata.route`` wins over it. The presets name their workload's labeller
            (``demo:skill_label``, ``demo:support_route_label``); None labels nothing.
        redact (`bool`, defaults to True), redact_patterns (`dict[str, str]`): extra
            ``LABEL: regex`` patterns on top of emails, phone and card numbers.
        retain_until_consumed (`int`, defaults to 100000): acknowledged events kept in
            memory until the consumer group commits past them, and re-sent after a broker
            outage (a broker that lost its log, like the dev broker, loses nothing then).
        spool_unconfirmed_on_close (`bool`, defaults to False): at shutdown, also spool
            the acknowledged events the consumer group has not committed past (after a
            short wait for it). For a broker that keeps its log in memory and stops with
            the stack (``distillery run``'s embedded one turns it on); a durable Kafka
            cluster keeps them, so production leaves it off.
    """

    enabled: bool = True
    kafka: KafkaConfig = KafkaConfig()
    store_dsn: str | None = None
    spool_dir: Path | None = None
    queue_size: int = Field(default=10_000, ge=1)
    sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    route_labeler: str | None = Field(default=None, pattern=r"^[\w.]+:[\w]+$")
    redact: bool = True
    redact_patterns: dict[str, str] = Field(default_factory=dict)
    retain_until_consumed: int = Field(default=100_000, ge=0)
    spool_unconfirmed_on_close: bool = False
