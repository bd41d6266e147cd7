"""POST /v1/feedback and the shadow audit over fake tiers: the HTTP contract.

The real path (Serve, the broker, both stores) is in tests/integration/test_live_quality.py.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fastapi.testclient import TestClient

from feedback import EscalationEvent
from gateway._api import build_api
from gateway._feedback_sink import FeedbackSink
from gateway._ledger import RatingsConfig, ResponseLedger
from gateway._serving import OpenAIServing
from gateway.metrics import GatewayMetrics
from gateway.settings import ServerConfig
from router import AuditConfig, CascadeConfig, CascadeRouter, ShadowAuditor, ThresholdPolicy
from tests.fakes.clients import FakeProducer, FakeTier, make_generation


def _student(req: Any) -> Any:
    prompt = req.prompt or req.messages[-1].content
    prob = 0.999 if prompt.startswith("reverse") else 0.5  # sure of reverse, unsure of the rest
    return make_generation("olleh", prob, "student-v1", "student")


class Stack:
    def __init__(self, *, audit_share: float = 0.0, clock: Any = None, ratings: bool = True) -> None:
        self.order: list[str] = []
        self.teacher = FakeTier(self._teacher_answer)
        self.student = FakeTier(_student)
        router = CascadeRouter(
            self.student, self.teacher, ThresholdPolicy("mean_logprob", 0.9), CascadeConfig()
        )
        self.metrics = GatewayMetrics()
        self.producer = FakeProducer()
        sink = FeedbackSink(self.producer, sample_rate=0.0)  # type: ignore[arg-type]
        self.auditor = ShadowAuditor(
            self.teacher,
            lambda a, b: a == b,
            AuditConfig(share=audit_share, max_per_s=100.0, burst=100),
            self.metrics,
            rng=random.Random(0),
        )
        ledger_cfg = RatingsConfig(ttl_s=60)
        ledger = ResponseLedger(ledger_cfg, **({"clock": clock} if clock else {})) if ratings else None
        self.serving = OpenAIServing(
            router,
            self.metrics,
            ServerConfig(max_tokens_limit=64),
            lambda: {"student": ("student", "student-v1"), "teacher": ("teacher", "teacher-v1")},
            sink,
            auditor=self.auditor,
            ledger=ledger,
        )

        async def health() -> dict[str, Any]:
            return {}

        self.app = build_api(self.serving, self.metrics, health)
        self.client = TestClient(self.app, raise_server_exceptions=False)

    def _teacher_answer(self, req: Any) -> Any:
        self.order.append("teacher called")
        return make_generation("HELLO", 0.99, "teacher-v1", "teacher")

    def ask(self, prompt: str = "reverse: hello =") -> dict[str, Any]:
        resp = self.client.post("/v1/completions", json={"model": "distillery", "prompt": prompt})
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def rate(self, **body: Any) -> Any:
        return self.client.post("/v1/feedback", json=body)

    def ratings(self) -> list[EscalationEvent]:
        return [e for e in self.producer.events if e.kind == "feedback"]


async def test_the_clients_answer_is_sent_before_the_teacher_is_called_for_its_audit():
    stack = Stack(audit_share=1.0)
    body = json.dumps({"model": "distillery", "prompt": "reverse: hello ="}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            stack.order.append("client answered")

    await stack.app(scope, receive, send)
    await stack.auditor.join()
    assert stack.order == ["client answered", "teacher called"]
    text = stack.metrics.render().decode()
    assert 'distillery_audits_total{model_version="student-v1",verdict="disagreed"} 1.0' in text
    await stack.auditor.close()


def test_a_served_answer_can_be_rated_and_repeats_are_idempotent():
    stack = Stack()
    answer = stack.ask()
    first = stack.rate(id=answer["id"], rating=False, correction="hello reversed", comment="wrong")
    assert first.status_code == 200, first.text
    ack = first.json()
    assert ack["status"] == "recorded" and ack["response_id"] == answer["id"] and ack["id"].startswith("fb-")
    again = stack.rate(id=answer["id"], rating=False, correction="hello reversed", comment="wrong")
    assert again.json() == {**ack, "status": "unchanged"}
    (event,) = stack.ratings()
    assert event.request_id == f"{answer['id']}-0" and event.tier == "student"
    assert event.rating == 0.0 and event.correction == "hello reversed" and event.comment == "wrong"
    assert event.prompt == "reverse: hello =" and event.student_answer == "olleh"
    # A changed mind is a new rating (the store keeps the latest).
    assert stack.rate(id=answer["id"], rating=0.9).json()["status"] == "recorded"
    assert [e.rating for e in stack.ratings()] == [0.0, 0.9]
    text = stack.metrics.render().decode()
    assert 'distillery_feedback_ratings_total{correction="true",tier="student",verdict="bad"} 1.0' in text
    assert 'distillery_feedback_ratings_total{correction="false",tier="student",verdict="good"} 1.0' in text


def test_the_teachers_answer_can_be_rated_too():
    stack = Stack()
    answer = stack.ask("shift: hello =")
    assert answer["distillery"][0]["tier"] == "teacher"
    assert stack.rate(id=answer["id"], rating=True).status_code == 200
    (event,) = stack.ratings()
    assert event.tier == "teacher" and event.teacher_answer == "HELLO" and event.student_answer == "olleh"


def test_each_prompt_of_a_completion_is_rated_by_its_index():
    stack = Stack()
    resp = stack.client.post(
        "/v1/completions", json={"model": "distillery", "prompt": ["reverse: a =", "shift: b ="]}
    )
    rid = resp.json()["id"]
    assert stack.rate(id=rid, index=1, rating=1).status_code == 200
    assert stack.rate(id=rid, index=2, rating=1).status_code == 404
    assert [e.request_id for e in stack.ratings()] == [f"{rid}-1"]


def test_unknown_and_expired_ids_are_404():
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    stack = Stack(clock=clock)
    answer = stack.ask()
    unknown = stack.rate(id="chatcmpl-0000", rating=True)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "response_not_found"
    clock.now += 61  # past ttl_s
    expired = stack.rate(id=answer["id"], rating=True)
    assert expired.status_code == 404 and expired.json()["error"]["code"] == "response_not_found"
    assert stack.ratings() == []


@pytest.mark.parametrize(
    "body",
    [
        {"rating": True},  # no id
        {"id": "x"},  # no rating
        {"id": "x", "rating": 1.5},
        {"id": "x", "rating": -0.1},
        {"id": "x", "rating": "good"},
        {"id": "x", "rating": None},
        {"id": "", "rating": True},
        {"id": "x" * 201, "rating": True},
        {"id": 12, "rating": True},
        {"id": "x", "rating": True, "index": -1},
        {"id": "x", "rating": True, "correction": "   "},
        {"id": "x", "rating": True, "correction": 3},
        {"id": "x", "rating": True, "comment": "c" * 4097},
        {"id": "x", "rating": True, "score": 1},  # a misspelt field is refused, not ignored
    ],
)
def test_bad_feedback_is_400_with_a_json_error_and_records_nothing(body):
    stack = Stack()
    resp = stack.rate(**body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert "Traceback" not in resp.text and ".py" not in resp.text
    assert stack.ratings() == []


def test_non_json_nan_and_lone_surrogates_are_400():
    stack = Stack()
    answer = stack.ask()
    raw = stack.client.post("/v1/feedback", content=b'{"id": "%s", "rating": NaN}' % answer["id"].encode())
    assert raw.status_code == 400
    assert stack.client.post("/v1/feedback", content=b"not json").status_code == 400
    surrogate = b'{"id": "%s", "rating": true, "correction": "\\ud800"}' % answer["id"].encode()
    assert stack.client.post("/v1/feedback", content=surrogate).status_code == 400
    assert stack.ratings() == []


def test_feedback_is_503_not_500_when_this_gateway_records_none():
    stack = Stack(ratings=False)
    answer = stack.ask()
    resp = stack.rate(id=answer["id"], rating=True)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "feedback_disabled"


def test_a_bad_rating_is_never_counted_against_a_tier():
    stack = Stack()
    stack.ask()
    stack.rate(id="nope", rating=True)
    stack.rate(id="x", rating=7)
    text = stack.metrics.render().decode()
    assert 'outcome="client_error"' not in text and "teacher_errors_total{reason" in text
    assert stack.teacher.calls == []


@pytest.mark.parametrize("rating", ["great", 1.5, None])
def test_a_bad_rating_says_what_a_rating_is(rating):
    resp = Stack().rate(id="x", rating=rating)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "rating"
    assert error["message"] == "rating: rating must be true, false or a number between 0 and 1"


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_an_escalation_records_whether_the_teachers_answer_was_cut_off(finish):
    stack = Stack()
    stack._teacher_answer = lambda req: make_generation("HELLO", 0.99, "teacher-v1", "teacher").model_copy(  # type: ignore[method-assign]
        update={"finish_reason": finish}
    )
    stack.teacher.answer = stack._teacher_answer
    body = stack.ask("unsure: hello =")
    assert body["choices"][0]["text"] == "HELLO"  # served either way: the client set the limit
    (event,) = [e for e in stack.producer.events if e.kind == "escalation"]
    assert event.teacher_finish_reason == finish
    assert (event.teacher_label() is None) == (finish == "length")
