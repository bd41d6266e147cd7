"""The escalation producer: never blocks the gateway, never drops an event silently.

``submit`` puts the event on a bounded in-memory queue and returns. A background thread
owns the ``KafkaProducer`` (acks=all) and moves events to the broker. Events it cannot
deliver (broker down, queue full) go to the fsync'd disk spool and are re-sent in order
when the broker is back; while the spool holds anything, new events queue up behind it
so order is kept. Acknowledged events also stay in memory until the consumer group
commits past them, and are re-sent after an outage: a broker that loses its log on
restart (the dev broker does) loses nothing, and the store's request-id idempotency
absorbs the duplicates a durable broker would then see.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections import deque
from typing import Any

from feedback._broker import ensure_topics
from feedback._spool import DiskSpool
from feedback.config import FeedbackConfig
from feedback.errors import SpoolWriteError
from feedback.metrics import FeedbackMetrics
from feedback.redaction import Redactor
from feedback.schema import EscalationEvent

__all__ = ["EscalationProducer"]

logger = logging.getLogger(__name__)

Record = tuple[str, bytes, bytes]  # topic, key, value
BATCH = 500
RECONNECT_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 1.0


class EscalationProducer:
    def __init__(
        self,
        config: FeedbackConfig,
        bootstrap: str,
        spool: DiskSpool,
        metrics: FeedbackMetrics | None = None,
    ) -> None:
        self._config = config
        self._kafka = config.kafka
        self._bootstrap = bootstrap
        self._spool = spool
        self._metrics = metrics or FeedbackMetrics()
        self._redactor = Redactor(extra=config.redact_patterns, enabled=config.redact)
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=config.queue_size)
        self._spool_lock = threading.Lock()  # submit() may spool from the caller's thread
        self._retained: deque[tuple[int, int, Record]] = deque()
        self._last_offset: dict[tuple[str, int], int] = {}
        """The last acknowledged offset per (topic, partition): partition numbers repeat
        across topics, and a samples record must not stand for the escalation topic's log."""
        self._replay = False
        self._producer: Any = None
        self._admin: Any = None
        self._broker_up = False
        self._next_connect = 0.0
        self._committed: dict[int, int] = {}
        self._epoch = 0
        self._watcher = threading.Thread(target=self._watch_committed, name="escalation-offsets", daemon=True)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="escalation-producer", daemon=True)
        self._metrics.spool_depth.set(spool.depth)

    # ---- caller side ----------------------------------------------------------------
    def start(self) -> EscalationProducer:
        self._thread.start()
        self._watcher.start()
        return self

    def submit(self, event: EscalationEvent) -> None:
        """Non-blocking. Raises ``SpoolWriteError`` only when the event cannot be kept at all."""
        event = self._redactor.redact_event(event)
        topic = self._kafka.sample_topic if event.kind == "sample" else self._kafka.topic
        record = (topic, event.request_id.encode(), event.to_wire())
        self._idle.clear()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._to_spool([record])

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self._spool.depth

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Waits until every submitted event is acknowledged by the broker (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pending == 0 and self._idle.is_set():
                return True
            time.sleep(0.02)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Flushes and spools what is still queued. With ``spool_unconfirmed_on_close`` it
        also waits a little for the consumer group to commit past what the broker
        acknowledged and spools the rest: a broker that keeps its log in memory (the
        embedded one) loses those when it stops after this process. Whoever claims this
        spool slot next re-sends them; the store drops the duplicates."""
        self.flush(timeout_s)
        keep_unconfirmed = self._config.spool_unconfirmed_on_close
        deadline = time.monotonic() + min(timeout_s, 5.0)
        while keep_unconfirmed and self._retained and time.monotonic() < deadline:
            time.sleep(0.1)
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        self._watcher.join(timeout=timeout_s)
        leftover: list[Record] = [r for _, _, r in self._retained] if keep_unconfirmed else []
        self._retained.clear()
        while True:
            try:
                leftover.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if leftover:
            self._to_spool(leftover)
        for client in (self._producer, self._admin):
            if client is not None:
                try:
                    client.close(timeout=2) if client is self._producer else client.close()
                except Exception:
                    logger.debug("closing kafka client failed", exc_info=True)

    # ---- spool ----------------------------------------------------------------------
    def _to_spool(self, records: list[Record]) -> None:
        lines = [json.dumps([t, k.decode(), v.decode()]).encode() for t, k, v in records]
        with self._spool_lock:
            try:
                self._spool.append(lines)
            except SpoolWriteError:
                self._metrics.spool_errors.inc(len(records))
                logger.critical("feedback spool write failed: %d events at risk", len(records), exc_info=True)
                raise
        self._metrics.spooled.inc(len(records))
        self._metrics.spool_depth.set(self._spool.depth)

    @staticmethod
    def _from_spool(line: bytes) -> Record:
        topic, key, value = json.loads(line)
        return str(topic), str(key).encode(), str(value).encode()

    # ---- worker thread --------------------------------------------------------------
    def _connect(self) -> bool:
        if self._producer is not None:
            return True
        if time.monotonic() < self._next_connect:
            return False
        self._next_connect = time.monotonic() + RECONNECT_INTERVAL_S
        from kafka import KafkaProducer

        if not self._reachable():
            return False
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                retries=5,
                linger_ms=self._kafka.linger_ms,
                batch_size=self._kafka.batch_size,
                request_timeout_ms=self._kafka.request_timeout_ms,
                max_block_ms=self._kafka.max_block_ms,
                delivery_timeout_ms=self._kafka.delivery_timeout_ms,
                retry_backoff_ms=100,
                reconnect_backoff_max_ms=1000,
            )
            # A broker that lost its state (dev broker restart) lost its topics too.
            ensure_topics(
                self._bootstrap, self.topics, self._kafka.partitions, self._kafka.replication_factor
            )
        except Exception:
            logger.warning("kafka client could not start at %s; spooling", self._bootstrap, exc_info=True)
            self._producer = None
            return False
        return True

    def _reachable(self) -> bool:
        """A TCP probe first: constructing a client against a dead broker blocks for seconds,
        and the worker must keep spooling meanwhile."""
        for hostport in self._bootstrap.split(","):
            host, _, port = hostport.strip().rpartition(":")
            try:
                with socket.create_connection((host or "localhost", int(port)), timeout=0.5):
                    return True
            except (OSError, ValueError):
                continue
        return False

    @property
    def topics(self) -> list[str]:
        return [self._kafka.topic, self._kafka.sample_topic, self._kafka.dead_letter_topic]

    def _mark_down(self) -> None:
        """Drops the client; the next ``_connect`` (once a second) is the reachability probe."""
        if self._broker_up:
            logger.warning("kafka delivery failed; spooling until the broker is back")
        self._broker_up = False
        self._replay = True
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:
                logger.debug("closing failed producer", exc_info=True)

    def _send(self, records: list[Record]) -> int:
        """Sends and waits for acks; returns how many leading records were acknowledged."""
        futures = []
        try:
            for topic, key, value in records:
                futures.append(self._producer.send(topic, key=key, value=value))
            self._producer.flush(timeout=self._kafka.delivery_timeout_ms / 1000)
        except Exception:
            logger.debug("send failed", exc_info=True)
        acked = 0
        for record, fut in zip(records, futures, strict=False):
            if not (fut.is_done and fut.succeeded()):
                break
            md = fut.value
            where = (md.topic, md.partition)
            if md.offset <= self._last_offset.get(where, -1) and md.topic == self._kafka.topic:
                self._replay = True  # the log went backwards: the broker lost it (restart)
            self._last_offset[where] = md.offset
            if self._config.retain_until_consumed and record[0] == self._kafka.topic:
                self._retained.append((md.partition, md.offset, record))
                if len(self._retained) > self._config.retain_until_consumed:
                    self._retained.popleft()
            self._metrics.produced.labels(record[0]).inc()
            acked += 1
        if acked < len(records):
            self._mark_down()
        else:
            self._broker_up = True
        self._metrics.retained.set(len(self._retained))
        return acked

    def _replay_retained(self) -> None:
        """After an outage, re-send what the consumer may not have seen."""
        window = [r for _, _, r in self._retained]
        self._retained.clear()
        self._last_offset.clear()
        self._epoch += 1
        self._committed = {}  # offsets from before the outage say nothing about the new log
        self._replay = False
        for i in range(0, len(window), BATCH):
            chunk = window[i : i + BATCH]
            acked = self._send(chunk)
            self._metrics.resent.labels("unconfirmed").inc(acked)
            if acked < len(chunk):
                # Put the rest back for the next attempt; newer entries stay behind them.
                rest = chunk[acked:] + window[i + BATCH :]
                self._retained.extendleft((-1, -1, r) for r in reversed(rest))
                self._replay = True
                return

    def _drain_spool(self) -> None:
        while self._spool.depth and not self._stop.is_set():
            lines, end = self._spool.peek(BATCH)
            if not lines:
                break
            records = [self._from_spool(line) for line in lines]
            acked = self._send(records)
            if acked == len(records):
                with self._spool_lock:
                    self._spool.ack(end, len(records))
                self._metrics.resent.labels("spool").inc(acked)
                self._metrics.spool_depth.set(self._spool.depth)
            else:
                # Partial: the acked head will be sent again; the store deduplicates.
                return

    def _watch_committed(self) -> None:
        """Its own thread: reading group offsets can block for seconds (client bootstrap),
        which must never stall delivery."""
        while not self._stop.wait(PRUNE_INTERVAL_S):
            if not self._retained or not self._broker_up:
                continue
            try:
                if self._admin is None:
                    from kafka import KafkaAdminClient

                    self._admin = KafkaAdminClient(bootstrap_servers=self._bootstrap, request_timeout_ms=3000)
                group = self._kafka.consumer_group
                epoch = self._epoch
                offsets = self._admin.list_group_offsets(group).get(group, {})
                if epoch == self._epoch:  # not across an outage: old offsets mean nothing after it
                    self._committed = {
                        tp.partition: om.offset for tp, om in offsets.items() if tp.topic == self._kafka.topic
                    }
            except Exception:
                logger.debug("could not read consumer group offsets", exc_info=True)
                admin, self._admin = self._admin, None
                if admin is not None:
                    with contextlib.suppress(Exception):
                        admin.close()

    def _prune(self) -> None:
        committed = self._committed
        while self._retained:
            partition, offset, _ = self._retained[0]
            if partition < 0 or offset >= committed.get(partition, 0):
                break
            self._retained.popleft()
        self._metrics.retained.set(len(self._retained))

    def _take_batch(self) -> list[Record]:
        """The next delivery step's events: the first to arrive, and whatever follows it
        within ``kafka.collect_ms`` (a full batch, or a stop, sends at once)."""
        batch: list[Record] = []
        try:
            batch.append(self._queue.get(timeout=0.05))
        except queue.Empty:
            return batch
        deadline = time.monotonic() + self._kafka.collect_ms / 1000
        while len(batch) < BATCH:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                break
            try:
                batch.append(self._queue.get(timeout=min(left, 0.05)))
            except queue.Empty:
                continue
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except SpoolWriteError:
                time.sleep(0.5)  # already counted and logged loudly; keep trying
            except Exception:
                logger.exception("escalation producer step failed")
                time.sleep(0.2)

    def _step(self) -> None:
        connected = self._connect()
        if connected and self._replay:
            self._replay_retained()
        if self._producer is not None and self._spool.depth:
            self._drain_spool()
        batch = self._take_batch()
        if batch:
            if self._producer is None or self._spool.depth:
                self._to_spool(batch)
            else:
                acked = self._send(batch)
                if acked < len(batch):
                    self._to_spool(batch[acked:])
        elif self._queue.empty() and self._spool.depth == 0 and not self._replay:
            self._idle.set()
        self._prune()
