"""Runbook "Replay the spool": ``distillery feedback replay-spool DIR`` sends an orphaned
spool slot's events to a real broker (Tansu), and they reach the store exactly once;
a slot a live producer holds is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from feedback import (
    DiskSpool,
    EscalationEvent,
    EscalationProducer,
    FeedbackConfig,
    FeedbackConsumer,
    KafkaConfig,
    SQLiteStore,
    TansuBroker,
    claim_spool_dir,
)
from tests.conftest import free_port

pytestmark = pytest.mark.integration

DISTILLERY = str(Path(sys.executable).parent / "distillery")
FAST = {
    "request_timeout_ms": 1500,
    "max_block_ms": 1000,
    "delivery_timeout_ms": 3000,
}


def _replay(spool: Path, bootstrap: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISTILLERY_VAR_DIR": str(tmp / "var")}
    env |= {f"DISTILLERY_FEEDBACK__KAFKA__{k.upper()}": str(v) for k, v in FAST.items()}
    return subprocess.run(
        [DISTILLERY, "feedback", "replay-spool", str(spool), "--bootstrap", bootstrap, "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_replay_spool_sends_an_orphaned_slot_once(tmp_path: Path) -> None:
    base = tmp_path / "spool"
    # A replica that could not reach its broker spooled five events, then went away.
    claim = claim_spool_dir(base)
    dead = f"127.0.0.1:{free_port()}"
    producer = EscalationProducer(
        FeedbackConfig(kafka=KafkaConfig(**FAST)), dead, DiskSpool(claim.path)
    ).start()
    ids = [f"orphan-{i}" for i in range(5)]
    for rid in ids:
        producer.submit(
            EscalationEvent(request_id=rid, prompt="shift: abc =", student_answer="abc", teacher_answer="bcd")
        )
    producer.close(timeout_s=2)
    assert DiskSpool(claim.path).depth == 5

    broker = TansuBroker(log_path=tmp_path / "tansu.log").start()
    store = SQLiteStore(tmp_path / "feedback.db")
    consumer = FeedbackConsumer(KafkaConfig(**FAST), broker.bootstrap, store)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        refused = _replay(claim.path, broker.bootstrap, tmp_path)  # its owner still holds it
        assert refused.returncode == 2 and "running producer" in refused.stderr
        claim.release()

        done = _replay(claim.path, broker.bootstrap, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report == {"spool": str(claim.path), "events": 5, "sent": 5, "left": 0}
        assert DiskSpool(claim.path).depth == 0

        deadline = time.monotonic() + 60
        while store.count(kind="escalation") < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.count(kind="escalation") == 5
        again = _replay(claim.path, broker.bootstrap, tmp_path)  # nothing left: a no-op
        assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["events"] == 0
        assert {e.request_id for e in store.events()} == set(ids)
    finally:
        consumer.stop()
        thread.join(10)
        consumer.close()
        broker.stop()
