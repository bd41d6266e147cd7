"""The feedback consumer: topic -> store, at-least-once delivery made exactly-once rows.

Offsets are committed only after the store commit; the store ignores request ids it has,
so a crash between the two re-delivers a batch without duplicating a row. A message that
does not validate goes to the dead-letter topic (with the reason in a header) and is
committed past, so one bad producer cannot stall the loop.

Partitions are assigned statically (``consumer_index`` of ``consumer_instances`` takes
every partition ``p`` with ``p % instances == index``), with offsets committed under the
consumer group: no group join, no rebalance, no heartbeat. That is what keeps the consumer
reading after a broker restart -- a restarted dev broker (Tansu) wedges a group's
join/sync for minutes when the old member comes back -- and a feedback sink needs no
dynamic balancing: the store is idempotent, so an overlap of two instances during a deploy
costs duplicates, never rows.

A broker can also come back without its log (the dev broker keeps it in memory). Our own
committed offsets then vanish from the group, which is how it is noticed: before every
commit, and every few seconds while idle, the group's offsets are compared with what this
consumer last committed, and a partition whose offset went missing (or backwards) is read
again from the start (or from where the group now says). Comparing the read position with
the log end instead is not reliable: the new log can outgrow the old position before the
check runs, and Tansu's end offsets do not count records.
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

CHECK_INTERVAL_S = 2.0


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
        self._next_check = 0.0
        self._ours: dict[Any, int] = {}  # partition -> offset this consumer last committed
        self._topics = [config.topic, config.sample_topic]
        ensure_topics(
            bootstrap,
            [*self._topics, config.dead_letter_topic],
            config.partitions,
            config.replication_factor,
        )
        self._consumer: Any = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=config.consumer_group,  # where offsets are committed; no group join
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            request_timeout_ms=config.request_timeout_ms,
            reconnect_backoff_max_ms=1000,
        )
        self._dlq: Any = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=5)
        self._assign()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Polls until stopped. A failing step (broker gone, store locked) is logged once
        with its traceback, then once a minute while it keeps failing, and its recovery
        once: a dead broker made this log a traceback twice a second."""
        failing_since: float | None = None
        failures = 0
        next_report = 0.0
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:
                failures += 1
                now = time.monotonic()
                if failing_since is None:
                    failing_since, next_report = now, now + 60.0
                    logger.exception("feedback consumer step failed; retrying every 0.5 s")
                elif now >= next_report:
                    next_report = now + 60.0
                    logger.warning(
                        "feedback consumer still failing after %.0fs (%d attempts): %s",
                        now - failing_since,
                        failures,
                        f"{type(exc).__name__}: {exc}"[:200],
                    )
                self._stop.wait(0.5)
                continue
            if failing_since is not None:
                logger.warning(
                    "feedback consumer recovered after %.0fs (%d failed attempts)",
                    time.monotonic() - failing_since,
                    failures,
                )
                failing_since, failures = None, 0

    def poll_once(self, timeout_ms: int = 500) -> int:
        """One check (partitions, lost logs, lag; every ``CHECK_INTERVAL_S``) -> poll ->
        validate -> dead-letter -> store -> commit cycle; rows added. The check comes
        before the poll: one that fails after a poll would drop the polled records from
        this instance's view (its position is past them, nothing stored or committed)."""
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + CHECK_INTERVAL_S
            self._assign()
            self._rewind_lost_partitions()
            self._update_lag()
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=self._max_records)
        records = [r for part in batches.values() for r in part]
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
        if self._rewind_lost_partitions() is False:
            # (After a rewind the batch is stored but not committed past: the partition is
            # read again from where the broker now says, and the store drops the repeats.
            # Nor when the group's offsets could not be read: a broker just back without
            # its log answers that way for a while, and committing this instance's old
            # position into the new log would hide the loss the next check looks for,
            # skipping every record the new log holds below it.)
            self._commit()
        for kind in ("escalation", "sample", "audit", "feedback"):
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

    # ---- partitions and offsets ------------------------------------------------------
    def _owned(self, partition: int) -> bool:
        return partition % self._config.consumer_instances == self._config.consumer_index

    def _assign(self) -> None:
        """(Re)assigns this instance's partitions; picks up partitions added to a topic."""
        from kafka import TopicPartition

        try:
            wanted = {
                TopicPartition(topic, p)
                for topic in self._topics
                for p in self._consumer.partitions_for_topic(topic) or ()
                if self._owned(p)
            }
        except Exception:
            logger.debug("could not read topic metadata", exc_info=True)
            return
        if wanted and wanted != set(self._consumer.assignment()):
            self._consumer.assign(sorted(wanted))
            # A partition gone from the topic (a broker back without its log re-creates it,
            # possibly with fewer partitions) has no offset of ours left to check: seeking
            # it raised on every check, and each failed check dropped the batch just polled.
            self._ours = {tp: offset for tp, offset in self._ours.items() if tp in wanted}
            logger.info(
                "feedback consumer reads %s", ", ".join(f"{t.topic}/{t.partition}" for t in sorted(wanted))
            )

    def _commit(self) -> None:
        positions = {tp: self._consumer.position(tp) for tp in self._consumer.assignment()}
        self._consumer.commit(timeout_ms=self._config.request_timeout_ms)
        # (A partition whose position is being reset has none yet: nothing of ours to check.)
        self._ours.update({tp: offset for tp, offset in positions.items() if offset is not None})

    def _rewind_lost_partitions(self) -> bool | None:
        """Rewinds every partition whose committed offset is no longer ours; True if any,
        None when the group's offsets could not be read (then nothing may be committed)."""
        if not self._ours:
            return False
        assigned = set(self._consumer.assignment())
        try:
            timeout_ms = self._config.request_timeout_ms
            committed = {
                tp: self._consumer.committed(tp, timeout_ms=timeout_ms) for tp in self._ours if tp in assigned
            }
        except Exception:
            logger.debug("could not read committed offsets", exc_info=True)
            return None
        rewound = False
        for tp, broker_offset in committed.items():
            ours = self._ours[tp]
            if (broker_offset or 0) >= ours:  # still ours (or nothing was read yet)
                continue
            if broker_offset is None:
                logger.warning(
                    "%s/%d: the broker no longer has this group's offset %d (it lost its state); "
                    "reading the partition again from the start",
                    tp.topic,
                    tp.partition,
                    ours,
                )
                self._consumer.seek_to_beginning(tp)
            else:
                logger.warning(
                    "%s/%d: the group's offset went back from %d to %d; reading again from there",
                    tp.topic,
                    tp.partition,
                    ours,
                    broker_offset,
                )
                self._consumer.seek(tp, broker_offset)
            del self._ours[tp]
            self._metrics.rewinds.inc()
            rewound = True
        return rewound

    def _update_lag(self) -> None:
        try:
            parts = list(self._consumer.assignment())
            if not parts:
                return
            ends = self._consumer.end_offsets(parts)
            lag = sum(max(0, ends[tp] - self._consumer.position(tp)) for tp in parts)
            self._metrics.consumer_lag.set(lag)
        except Exception:
            logger.debug("could not compute consumer lag", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        try:
            self._consumer.close()
        finally:
            self._dlq.close(timeout=2)
