"""The feedback stream on a real Tansu broker and real stores, with faults. Counts are exact."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from feedback import (
    DiskSpool,
    EscalationEvent,
    EscalationProducer,
    FeedbackConfig,
    FeedbackConsumer,
    FeedbackMetrics,
    KafkaConfig,
    PostgresStore,
    SQLiteStore,
    TansuBroker,
)

pytestmark = pytest.mark.integration

FAST_KAFKA = KafkaConfig(
    request_timeout_ms=1500,
    max_block_ms=1000,
    delivery_timeout_ms=3000,
)


def _events(prefix: str, n: int) -> list[EscalationEvent]:
    return [
        EscalationEvent(
            request_id=f"{prefix}-{i}",
            prompt="shift: abc =",
            student_answer="abc",
            teacher_answer="bcd",
            skill="shift",
            student_confidence=0.8,
        )
        for i in range(n)
    ]


def _produce_plain(bootstrap: str, events: list[EscalationEvent]) -> None:
    """A plain kafka-python producer (no spool, no replay of what the broker lost)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for e in events:
        producer.send(FAST_KAFKA.topic, key=e.request_id.encode(), value=e.to_wire())
    producer.flush()
    producer.close()


def _wait(cond: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


class Stack:
    def __init__(self, tmp_path, broker: TansuBroker, store=None) -> None:
        self.broker = broker
        self.store = store or SQLiteStore(tmp_path / "feedback.db", busy_timeout_ms=100)
        self.metrics = FeedbackMetrics()
        cfg = FeedbackConfig(kafka=FAST_KAFKA)
        self.producer = EscalationProducer(
            cfg, broker.bootstrap, DiskSpool(tmp_path / "spool"), self.metrics
        ).start()
        self.consumer = FeedbackConsumer(
            FAST_KAFKA, broker.bootstrap, self.store, self.metrics, store_retry_max_s=0.5
        )
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.producer.close()
        self.consumer.stop()
        self.thread.join(timeout=10)
        self.consumer.close()
        self.store.close()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    broker = TansuBroker().start()
    s = Stack(tmp_path, broker)
    yield s
    s.close()
    broker.stop()


def test_happy_path_every_event_stored_once(stack):
    events = _events("ok", 200)
    for e in events:
        stack.producer.submit(e)
    assert _wait(lambda: stack.store.count() == 200)
    assert stack.store.request_ids() == sorted(e.request_id for e in events)
    assert stack.metric("distillery_feedback_produced_total", {"topic": "distillery.escalations"}) == 200
    assert stack.metric("distillery_feedback_spooled_total") == 0
    # The producer reads the group's committed offsets (no members: static assignment) and
    # drops what the consumer has committed from its re-send window.
    assert _wait(lambda: stack.metric("distillery_feedback_unconfirmed_events") == 0, 15)


def test_a_broker_killed_mid_stream_and_restarted_loses_nothing(stack):
    """(a) N=300: 100 before the kill, 100 while the broker is dead, 100 after its restart.
    The dev broker keeps its log in memory, so its restart also loses everything it had
    acknowledged; the spool and the producer's unconfirmed window cover both."""
    events = _events("kill", 300)
    for e in events[:100]:
        stack.producer.submit(e)
    time.sleep(0.3)  # some acknowledged and consumed, some acknowledged only, some in flight
    stack.broker.kill()
    for e in events[100:200]:
        stack.producer.submit(e)
    assert _wait(lambda: stack.metric("distillery_feedback_spooled_total") > 0, 30)
    stack.broker.start()
    for e in events[200:]:
        stack.producer.submit(e)
    assert _wait(lambda: stack.store.count() == 300, 90), stack.store.count()
    time.sleep(2)  # nothing more may arrive: exactly once
    assert stack.store.count() == 300
    assert stack.store.request_ids() == sorted(e.request_id for e in events)
    assert stack.producer.pending == 0
    assert stack.metric("distillery_feedback_spool_write_errors_total") == 0


def test_consumer_rereads_a_log_the_broker_lost_even_once_it_outgrew_the_old_position(tmp_path):
    """The consumer alone (a plain producer, no spool or replay to help): it has stored and
    committed 100 events when the broker restarts without its log; 150 new ones then land
    at once, past the consumer's old position before it notices anything. Every one is
    stored: the vanished group offset sends it back to the new log's start. (A group
    consumer stays wedged in its rejoin on this broker instead: DESIGN.md, Tansu.)"""
    broker = TansuBroker().start()
    store = SQLiteStore(tmp_path / "feedback.db")
    metrics = FeedbackMetrics()
    consumer = FeedbackConsumer(FAST_KAFKA, broker.bootstrap, store, metrics)
    try:
        before, after = _events("old-log", 100), _events("new-log", 150)
        _produce_plain(broker.bootstrap, before)
        assert _wait(lambda: (consumer.poll_once(), store.count())[1] == 100, 30)
        broker.kill()
        broker.start()
        _produce_plain(broker.bootstrap, after)
        assert _wait(lambda: (consumer.poll_once(), store.count())[1] == 250, 60), store.count()
        assert store.request_ids() == sorted(e.request_id for e in before + after)
        assert metrics.registry.get_sample_value("distillery_feedback_consumer_rewinds_total") == 1
    finally:
        consumer.close()
        store.close()
        broker.stop()


def test_a_lost_log_is_reread_even_when_the_group_offsets_cannot_be_read_just_after_the_restart(tmp_path):
    """The broker-kill chaos flake ("17 of 53 escalations not stored"), made certain: as in
    the test above, but the group's offsets cannot be read for the first checks after the
    restart (kafka-python's ``committed`` raises while a broker just back is not ready; on
    2 busy cores that window is seconds). A consumer that then commits its old position
    into the new log hides the loss from every later check and skips the new log's first
    records; it must commit nothing until it can tell. (Fault injected in the test: the
    client's ``committed`` fails; the consumer, broker and store are the real ones.)"""
    from kafka.errors import KafkaTimeoutError

    broker = TansuBroker().start()
    store = SQLiteStore(tmp_path / "feedback.db")
    metrics = FeedbackMetrics()
    consumer = FeedbackConsumer(FAST_KAFKA, broker.bootstrap, store, metrics)
    client = consumer._consumer
    real_committed = client.committed
    unreadable = {"calls": 0}

    def committed(tp, timeout_ms=None):  # type: ignore[no-untyped-def]
        if unreadable["calls"] > 0:
            unreadable["calls"] -= 1
            raise KafkaTimeoutError("group coordinator not available yet")
        return real_committed(tp, timeout_ms=timeout_ms)

    client.committed = committed
    try:
        before, after = _events("old-log", 100), _events("new-log", 150)
        _produce_plain(broker.bootstrap, before)
        assert _wait(lambda: (consumer.poll_once(), store.count())[1] == 100, 30)
        broker.kill()
        broker.start()
        _produce_plain(broker.bootstrap, after)
        unreadable["calls"] = 3  # the first batch's checks, and the next periodic one
        assert _wait(lambda: (consumer.poll_once(), store.count())[1] == 250, 60), (
            f"{250 - store.count()} of the new log's events never stored"
        )
        assert store.request_ids() == sorted(e.request_id for e in before + after)
        assert unreadable["calls"] == 0  # the fault did happen
    finally:
        consumer.close()
        store.close()
        broker.stop()


def test_store_unavailable_for_a_while_then_catch_up(stack):
    """(b) The store is locked by another writer while 200 events arrive; then released."""
    import sqlite3

    blocker = sqlite3.connect(stack.store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    events = _events("store", 200)
    for e in events:
        stack.producer.submit(e)
    assert _wait(lambda: stack.metric("distillery_feedback_store_errors_total") >= 2, 30)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert _wait(lambda: stack.store.count() == 200, 60)
    time.sleep(1)
    assert stack.store.count() == 200
    assert stack.store.request_ids() == sorted(e.request_id for e in events)


def test_malformed_message_is_dead_lettered_and_the_next_good_one_stored(stack):
    """(c) Two bad messages (not JSON; JSON failing the schema) then one good event."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    raw = KafkaProducer(bootstrap_servers=stack.broker.bootstrap, acks="all")
    raw.send("distillery.escalations", key=b"bad-1", value=b"{not json").get(timeout=10)
    raw.send("distillery.escalations", key=b"bad-2", value=b'{"request_id": ""}').get(timeout=10)
    good = _events("good", 1)[0]
    raw.send("distillery.escalations", key=b"good-0", value=good.to_wire()).get(timeout=10)
    raw.close()
    assert _wait(lambda: stack.store.count() == 1, 60)
    assert stack.store.request_ids() == ["good-0"]
    assert _wait(lambda: stack.metric("distillery_feedback_dead_lettered_total") == 2, 30)

    dlq = KafkaConsumer(bootstrap_servers=stack.broker.bootstrap, consumer_timeout_ms=3000)
    tp = TopicPartition("distillery.escalations.dlq", 0)
    dlq.assign([tp])
    dlq.seek_to_beginning(tp)
    dead = list(dlq)
    dlq.close()
    assert [m.key for m in dead] == [b"bad-1", b"bad-2"]
    reasons = [dict(m.headers)["distillery-dlq-reason"].decode() for m in dead]
    assert all(reasons) and "json" in reasons[0].lower()


def test_events_submitted_with_no_broker_at_all_are_spooled_then_delivered(tmp_path):
    broker = TansuBroker()  # not started yet: the gateway came up first
    cfg = FeedbackConfig(kafka=FAST_KAFKA)
    metrics = FeedbackMetrics()
    producer = EscalationProducer(cfg, broker.bootstrap, DiskSpool(tmp_path / "spool"), metrics).start()
    events = _events("early", 50)
    for e in events:
        producer.submit(e)
    assert _wait(lambda: metrics.registry.get_sample_value("distillery_feedback_spooled_total") == 50, 20)
    broker.start()
    store = SQLiteStore(tmp_path / "f.db")
    consumer = FeedbackConsumer(FAST_KAFKA, broker.bootstrap, store, metrics)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert _wait(lambda: store.count() == 50, 60)
        assert (
            metrics.registry.get_sample_value("distillery_feedback_resent_total", {"source": "spool"}) == 50
        )
    finally:
        producer.close()
        consumer.stop()
        thread.join(10)
        consumer.close()
        broker.stop()


def test_consumer_into_postgres_survives_a_store_outage(tmp_path, postgres_server):
    """(b) on PostgreSQL: the server is stopped while 150 events arrive, then started."""
    store = PostgresStore(postgres_server.dsn)
    with store._tx() as cur:
        cur.execute("DELETE FROM feedback_events")
    broker = TansuBroker().start()
    stack = Stack(tmp_path, broker, store)
    try:
        first = _events("pg-a", 50)
        for e in first:
            stack.producer.submit(e)
        assert _wait(lambda: store.count() == 50, 60)
        postgres_server.stop()
        try:
            second = _events("pg-b", 150)
            for e in second:
                stack.producer.submit(e)
            assert _wait(lambda: stack.metric("distillery_feedback_store_errors_total") >= 2, 30)
        finally:
            postgres_server.start()
        assert _wait(lambda: store.count() == 200, 60)
        time.sleep(1)
        assert store.count() == 200
        assert store.request_ids() == sorted(e.request_id for e in first + second)
    finally:
        stack.close()
        broker.stop()
