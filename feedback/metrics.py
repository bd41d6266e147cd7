"""Prometheus metrics of the feedback stream (producer side and consumer side)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["FeedbackMetrics"]


class FeedbackMetrics:
    """Registered on the caller's registry: the gateway's for the producer, the consumer
    process's own for the consumer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r
        self.produced = Counter(
            "distillery_feedback_produced_total", "Events acknowledged by the broker.", ["topic"], registry=r
        )
        self.spooled = Counter(
            "distillery_feedback_spooled_total", "Events written to the disk spool.", registry=r
        )
        self.resent = Counter(
            "distillery_feedback_resent_total",
            "Events re-sent from the spool or the unconfirmed window.",
            ["source"],
            registry=r,
        )
        self.spool_errors = Counter(
            "distillery_feedback_spool_write_errors_total",
            "Events that could not be spooled (lost unless the broker takes them later).",
            registry=r,
        )
        self.spool_depth = Gauge(
            "distillery_feedback_spool_depth", "Events waiting in the disk spool.", registry=r
        )
        self.retained = Gauge(
            "distillery_feedback_unconfirmed_events",
            "Acknowledged events not yet committed by the consumer group.",
            registry=r,
        )
        self.consumed = Counter(
            "distillery_feedback_consumed_total",
            "Events written to the feedback store.",
            ["kind"],
            registry=r,
        )
        self.duplicates = Counter(
            "distillery_feedback_duplicates_total",
            "Redelivered events the store already had (ignored).",
            registry=r,
        )
        self.dead_lettered = Counter(
            "distillery_feedback_dead_lettered_total", "Messages sent to the dead-letter topic.", registry=r
        )
        self.store_errors = Counter(
            "distillery_feedback_store_errors_total", "Failed store writes (retried).", registry=r
        )
        self.rewinds = Counter(
            "distillery_feedback_consumer_rewinds_total",
            "Partitions read again because the broker lost (or moved back) the group's offset.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "distillery_feedback_consumer_lag",
            "Messages behind the log end, summed over partitions.",
            registry=r,
        )
