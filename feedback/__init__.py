"""The feedback stream: escalation events through Kafka into a durable feedback store."""

from feedback._broker import TansuBroker, ensure_topics
from feedback._consumer import FeedbackConsumer
from feedback._producer import EscalationProducer
from feedback._spool import DiskSpool
from feedback._spool_dir import SpoolClaim, claim_spool_dir
from feedback._store import FeedbackStore, PostgresStore, SQLiteStore, holdout_bucket, open_store
from feedback.config import FeedbackConfig, KafkaConfig
from feedback.errors import FeedbackError, SpoolWriteError, StoreUnavailable
from feedback.metrics import FeedbackMetrics
from feedback.redaction import Redactor
from feedback.schema import SCHEMA_VERSION, EscalationEvent, EventMessage

__all__ = [
    "SCHEMA_VERSION",
    "DiskSpool",
    "EscalationEvent",
    "EscalationProducer",
    "EventMessage",
    "FeedbackConfig",
    "FeedbackConsumer",
    "FeedbackError",
    "FeedbackMetrics",
    "FeedbackStore",
    "KafkaConfig",
    "PostgresStore",
    "Redactor",
    "SQLiteStore",
    "SpoolClaim",
    "SpoolWriteError",
    "StoreUnavailable",
    "TansuBroker",
    "claim_spool_dir",
    "ensure_topics",
    "holdout_bucket",
    "open_store",
]
