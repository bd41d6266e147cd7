"""Live quality on the live stack: application feedback into both stores, shadow audits, and a
canary that is judged on live agreement.

The confidently-wrong candidate has the student's weights and a calibration that trusts
every answer (threshold 0): on the route it never learned (``shift``) it stops escalating
and serves wrong answers. Its escalation rate drops, so the escalation rule alone would
promote it; the audits of its answers show it agrees with the teacher far less.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from bench._traffic import Traffic, copy_with_threshold, mixed_demo_prompt
from deploy import CanaryConfig, CanaryController, ModelRegistry, judge_canary, parse_live_metrics
from feedback import FeedbackConsumer, FeedbackMetrics, PostgresStore
from retrain import ensure_registry

pytestmark = pytest.mark.integration


def _wait(cond: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def _chat(url: str, text: str) -> dict:
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "distillery", "messages": [{"role": "user", "content": text}], "max_tokens": 8},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_feedback_reaches_sqlite_and_postgres_through_the_stream(live_stack, postgres_dsn):
    url = live_stack.url
    answer = _chat(url, "reverse: kafka =")
    rid = answer["id"]
    body = {"id": rid, "rating": False, "correction": "akfak", "comment": "checked by hand"}
    first = httpx.post(f"{url}/v1/feedback", json=body, timeout=30)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "recorded"
    again = httpx.post(f"{url}/v1/feedback", json=body, timeout=30)
    assert again.json() == {**first.json(), "status": "unchanged"}
    teacher_answer = httpx.post(
        f"{url}/v1/completions",
        json={"model": "distillery-teacher", "prompt": "shift: abc =", "max_tokens": 8},
        timeout=30,
    ).json()
    assert (
        httpx.post(f"{url}/v1/feedback", json={"id": teacher_answer["id"], "rating": 0.8}).status_code == 200
    )

    store = live_stack.store
    assert _wait(lambda: {r.request_id for r in store.ratings()} >= {rid, f"{teacher_answer['id']}-0"})
    rated = {r.request_id: r for r in store.ratings()}
    mine = rated[rid]
    assert (mine.rating, mine.correction, mine.comment, mine.tier) == (
        0.0,
        "akfak",
        "checked by hand",
        "student",
    )
    assert mine.messages is not None and mine.messages[-1].content == "reverse: kafka ="
    assert rated[f"{teacher_answer['id']}-0"].tier == "teacher"

    # The same stream into PostgreSQL: a second consumer group reading the live broker.
    pg = PostgresStore(postgres_dsn)
    with pg._tx() as cur:
        cur.execute("DELETE FROM feedback_ratings")
    kafka = live_stack.settings.feedback.kafka.model_copy(update={"consumer_group": "live-quality-pg"})
    assert kafka.bootstrap is not None
    consumer = FeedbackConsumer(kafka, kafka.bootstrap, pg, FeedbackMetrics())
    try:
        assert _wait(lambda: (consumer.poll_once(), rid in {r.request_id for r in pg.ratings()})[1], 60)
        (pg_row,) = [r for r in pg.ratings() if r.request_id == rid]
        assert (pg_row.rating, pg_row.correction) == (0.0, "akfak")
    finally:
        consumer.close()
        pg.close()


@pytest.mark.parametrize(
    "body",
    [
        {"rating": True},
        {"id": "x", "rating": 2},
        {"id": "x", "rating": "yes"},
        {"id": "x", "rating": True, "correction": ""},
        {"id": "x", "rating": True, "extra": 1},
    ],
)
def test_bad_feedback_on_the_live_stack_is_400_json(live_stack, body):
    r = httpx.post(f"{live_stack.url}/v1/feedback", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["message"]


def test_unknown_response_id_on_the_live_stack_is_404(live_stack):
    r = httpx.post(f"{live_stack.url}/v1/feedback", json={"id": "chatcmpl-nope", "rating": True}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"


def test_confidently_wrong_canary_is_rolled_back_on_live_agreement(live_stack, tmp_path):
    settings = live_stack.settings
    registry = ModelRegistry(settings.resolved_registry_dir)
    initial = ensure_registry(registry, settings.tier_dir("student"))
    # Trusts every answer, including those of a route it never learned.
    wrong_dir = copy_with_threshold(initial.path, tmp_path / "overconfident", 0.0)
    wrong = registry.register(wrong_dir, "student-overconfident", {"parent": initial.version})

    def fetch() -> str:
        return httpx.get(f"{live_stack.url}/metrics", timeout=10).text

    config = CanaryConfig(
        share=0.5, min_requests=30, min_audits=30, max_escalation_increase=0.05, timeout_s=240
    )
    before = parse_live_metrics(fetch())
    try:
        with Traffic(live_stack.url, model="distillery", prompt=mixed_demo_prompt) as traffic:
            verdict, cur, can = CanaryController(registry, fetch, config, poll_s=1.0).run(wrong.version)
        assert verdict == "rollback", (cur, can)
        assert registry.pointers()["current"] == initial.version
        # It escalated less than the current version: the escalation rule alone would promote it.
        assert can.escalation_rate < cur.escalation_rate
        assert judge_canary(cur, can, config) == "promote"
        assert can.audited >= config.min_audits and can.agreement is not None and can.agreement < 0.9
        assert set(traffic.statuses) == {200} and traffic.errors == []
        reason = registry.audit()[-1]["reason"]
        assert "automatic rollback" in reason and "agreement" in reason
    finally:
        registry.promote(initial.version, reason="test cleanup", actor="test")

    after = parse_live_metrics(fetch())
    assert after.audits_on
    # Every disagreement is a missed escalation, stored as a training event of kind audit.
    disagreed = after.stats(wrong.version).audited - after.stats(wrong.version).agreed
    disagreed -= before.stats(wrong.version).audited - before.stats(wrong.version).agreed
    assert disagreed > 0
    store = live_stack.store
    assert _wait(lambda: store.count(kind="audit") >= disagreed, 60)
    audits = [e for e in store.events(kind="audit") if e.student_version == wrong.version]
    assert audits and all(e.request_id.endswith(":audit") and e.teacher_answer for e in audits)
    skills = Counter(e.skill for e in audits)
    assert skills["shift"] >= 0.9 * len(audits), skills  # the route it never learned
    text = fetch()
    # The cap held: at most max_per_s audit calls a second were made, the rest counted as dropped.
    assert 'distillery_audits_dropped_total{reason="rate_limited"}' in text
