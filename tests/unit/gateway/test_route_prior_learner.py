"""The ingress's prior learner on a real SQLite store: the verdicts follow the store, the
gauge shows the table, and a store it cannot read keeps the last verdicts."""

import contextlib

from feedback import EscalationEvent, SQLiteStore, StoreUnavailable
from gateway._route_prior import PriorLearner
from gateway.metrics import GatewayMetrics
from router import PriorConfig, RoutePrior


def _events(route: str, kind: str, n: int, start: int = 0) -> list[EscalationEvent]:
    return [
        EscalationEvent(
            request_id=f"{route}-{kind}-{start + i}",
            kind=kind,
            created_at=1000.0 + i,
            prompt="p",
            skill=route,
            student_version="s1",
        )
        for i in range(n)
    ]


def test_the_verdicts_and_the_gauge_follow_the_store(tmp_path):
    store = SQLiteStore(tmp_path / "f.db")
    store.insert(_events("plural", "escalation", 40) + _events("order", "sample", 40))
    metrics = GatewayMetrics()
    learner = PriorLearner(
        RoutePrior(PriorConfig(window_s=600)), str(tmp_path / "f.db"), 1.0, metrics, clock=lambda: 1300.0
    )
    learner.refresh()
    assert {(e.route, e.verdict) for e in learner.prior.entries} == {("plural", "teacher"), ("order", None)}
    text = metrics.render().decode()
    assert 'distillery_route_prior_escalation_rate{route="plural",verdict="teacher",version="s1"} 1.0' in text
    assert 'distillery_route_prior_escalation_rate{route="order",verdict="none",version="s1"} 0.0' in text
    store.insert(_events("plural", "sample", 40, 100))  # the student now serves half of them
    learner.refresh()
    assert {(e.route, e.verdict) for e in learner.prior.entries} == {("plural", None), ("order", None)}
    assert 'verdict="teacher"' not in metrics.render().decode()


def test_a_store_it_cannot_read_keeps_the_last_verdicts(tmp_path):
    store = SQLiteStore(tmp_path / "f.db")
    store.insert(_events("plural", "escalation", 40))
    calls = []

    def opener(dsn: str) -> SQLiteStore:
        calls.append(dsn)
        if len(calls) > 1:
            raise StoreUnavailable("store down")
        return store

    learner = PriorLearner(
        RoutePrior(PriorConfig()), "x", 1.0, GatewayMetrics(), opener=opener, clock=lambda: 1100.0
    )
    learner.refresh()
    learner._store = None  # as after a failed read
    with contextlib.suppress(StoreUnavailable):
        learner.refresh()
    assert [e.verdict for e in learner.prior.entries] == ["teacher"]
