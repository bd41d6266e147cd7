"""The feedback consumer: topic -> store, at-least-once delivery made exactly-once rows.

Offsets are committed only after the store commit; the store ignores request ids it has,
so a crash between the two re-delivers a batch without duplicating a row. A message that
does not validate goes to the dead-letter topic (with the reason in a header) and is
committed past, so one bad producer cannot stall the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydantic import ValidationError

from feedback._broker import ensure_topics
from feedback._store import FeedbackStore
from feedback.config import KafkaConfig
from feedback.errors import StoreUnavailable
from feedback.metrics import FeedbackMetrics
from feedback.schema import EscalationEvent

__all__ = ["FeedbackConsumer"]

logger = logging.getLogger(__name__)

LAG_INTERVAL_S = 2.0


class FeedbackConsumer:
    def __init__(
        self,
        config: KafkaConfig,
        bootstrap: str,
        store: FeedbackStore,
        metrics: FeedbackMetrics | None = None,
        *,
        max_records: int = 1000,
        store_retry_max_s: float = 5.0,
    ) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self._config = config
        self._store = store
        self._metrics = metrics or FeedbackMetrics()
        self._max_records = max_records
        self._retry_max_s = store_retry_max_s
        self._stop = threading.Event()
        self._next_lag = 0.0
        self._behind: dict[Any, int] = {}  # partition -> read position past its log's end
        ensure_topics(
            bootstrap,
            [config.topic, config.sample_topic, config.dead_letter_topic],
            config.partitions,
            config.replication_factor,
        )
        self._consumer: Any = KafkaConsumer(
            config.topic,
            config.sample_topic,
            bootstrap_servers=bootstrap,
            group_id=config.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=config.max_poll_interval_ms,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(500, config.session_timeout_ms // 4),
            fetch_max_wait_ms=100,
            request_timeout_ms=max(config.request_timeout_ms, config.session_timeout_ms + 1000),
            reconnect_backoff_max_ms=1000,
        )
        self._dlq: Any = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=5)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                logger.exception("feedback consumer step failed")
                time.sleep(0.5)

    def poll_once(self, timeout_ms: int = 500) -> int:
        """One poll -> validate -> dead-letter -> store -> commit cycle; rows added."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=self._max_records)
        records = [r for part in batches.values() for r in part]
        self._update_lag()
        if not records:
            return 0
        events: list[EscalationEvent] = []
        for record in records:
            try:
                events.append(EscalationEvent.from_wire(record.value))
            except (ValidationError, ValueError, TypeError) as exc:
                self._dead_letter(record, exc)
        added = self._store_with_retry(events)
        if added is None:
            return 0  # stopping: offsets stay uncommitted, the batch is redelivered
        self._consumer.commit()
        for kind in ("escalation", "sample"):
            n = sum(1 for e in events if e.kind == kind)
            if n:
                self._metrics.consumed.labels(kind).inc(n)
        self._metrics.duplicates.inc(len(events) - added)
        return added

    def _store_with_retry(self, events: list[EscalationEvent]) -> int | None:
        delay = 0.05
        while True:
            try:
                return self._store.insert(events)
            except StoreUnavailable as exc:
                self._metrics.store_errors.inc()
                logger.warning("feedback store unavailable (%s); retrying in %.2fs", exc, delay)
                # Keep the group membership alive while we wait (poll-free pause).
                if self._stop.wait(delay):
                    return None
                delay = min(self._retry_max_s, delay * 2)

    def _dead_letter(self, record: Any, exc: Exception) -> None:
        if isinstance(exc, ValidationError):
            reason = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in exc.errors()
            )
        else:
            reason = f"{type(exc).__name__}: {exc}"
        reason = reason[:500]
        headers = [
            ("distillery-dlq-reason", reason.encode()),
            ("distillery-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        future = self._dlq.send(
            self._config.dead_letter_topic, key=record.key, value=record.value, headers=headers
        )
        future.get(timeout=self._config.delivery_timeout_ms / 1000)
        self._metrics.dead_lettered.inc()
        logger.warning("dead-lettered %s/%d@%d: %s", record.topic, record.partition, record.offset, reason)

    def _update_lag(self) -> None:
        if time.monotonic() < self._next_lag:
            return
        self._next_lag = time.monotonic() + LAG_INTERVAL_S
        try:
            parts = list(self._consumer.assignment())
            if not parts:
                return
            ends = self._consumer.end_offsets(parts)
            lag = 0
            for tp in parts:
                position = self._consumer.position(tp)
                if ends[tp] >= position - 1:
                    # (Tansu has been seen reporting an end one short of a position it
                    # served, for seconds on end: a gap of one is not a lost log.)
                    self._behind.pop(tp, None)
                    lag += max(0, ends[tp] - position)
                elif self._behind.get(tp) != position:
                    # Seen once; a lost log shows the same stuck position at the next check.
                    self._behind[tp] = position
                else:
                    # The partition's log is shorter than what this consumer already read:
                    # the broker lost it (the dev broker keeps its log in memory) and is
                    # filling a new one. Reading on from the old position would silently
                    # skip the new log up to there; read it from the start instead (the
                    # store drops the request ids it already has).
                    del self._behind[tp]
                    logger.warning(
                        "%s/%d ends at %d, behind our position %d: the broker lost its log; "
                        "re-reading the partition from the start",
                        tp.topic,
                        tp.partition,
                        ends[tp],
                        position,
                    )
                    self._consumer.seek_to_beginning(tp)
                    lag += ends[tp]
            self._metrics.consumer_lag.set(lag)
        except Exception:
            logger.debug("could not compute consumer lag", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        try:
            self._consumer.close()
        finally:
            self._dlq.close(timeout=2)
