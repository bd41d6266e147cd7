"""Canary evidence from every replica: typed counts on the registry's evidence board, summed
by the controller, never falling, and a canary judged on all of them."""

from __future__ import annotations

import itertools
from pathlib import Path

from deploy import (
    CanaryConfig,
    CanaryController,
    EvidenceBoard,
    EvidencePublisher,
    FileControlStore,
    LiveMetrics,
    ReplicaEvidence,
    VersionStats,
)
from gateway.metrics import GatewayMetrics
from tests.unit.deploy.registries import registry_with_two


def _live(
    versions: dict[str, tuple[float, float]],
    routes: dict[tuple[str, str], tuple[float, float]] | None = None,
    *,
    audits_on: bool = False,
) -> LiveMetrics:
    return LiveMetrics(
        versions={v: VersionStats(a, e) for v, (a, e) in versions.items()},
        gate_agreement={"v2": 0.97},
        audits_on=audits_on,
        by_route={k: VersionStats(a, e) for k, (a, e) in (routes or {}).items()},
    )


def test_the_board_sums_every_replica(tmp_path: Path) -> None:
    board = EvidenceBoard(FileControlStore(tmp_path))
    assert board.read() is None  # nobody has published
    board.publish(ReplicaEvidence.of("a", _live({"v1": (10, 1)}, {("v1", "plural"): (4, 1)}), 1.0))
    board.publish(
        ReplicaEvidence.of(
            "b", _live({"v1": (5, 2), "v2": (3, 0)}, {("v1", "plural"): (2, 2)}, audits_on=True), 1.0
        )
    )
    live = EvidenceBoard(FileControlStore(tmp_path)).read()  # another process: the controller's
    assert live is not None
    assert live.stats("v1") == VersionStats(15, 3) and live.stats("v2") == VersionStats(3, 0)
    assert live.by_route[("v1", "plural")] == VersionStats(6, 3)
    assert live.audits_on and live.gate_agreement == {"v2": 0.97}


def test_counts_never_fall_when_a_replica_goes_or_a_file_is_stale_or_broken(tmp_path: Path) -> None:
    board = EvidenceBoard(FileControlStore(tmp_path))
    publisher = EvidenceBoard(FileControlStore(tmp_path))
    publisher.publish(ReplicaEvidence.of("a", _live({"v1": (10, 1)}), 5.0))
    publisher.publish(ReplicaEvidence.of("b", _live({"v1": (4, 0)}), 5.0))
    assert board.read().stats("v1").answers == 14  # type: ignore[union-attr]
    (tmp_path / "evidence" / "b.json").unlink()  # replica b gone (its node lost)
    publisher.publish(ReplicaEvidence.of("a", _live({"v1": (3, 0)}), 4.0))  # older than what was read
    (tmp_path / "evidence" / "junk.json").write_text("{not json")
    assert board.read().stats("v1").answers == 14  # type: ignore[union-attr]
    publisher.publish(ReplicaEvidence.of("a", _live({"v1": (20, 1)}), 6.0))
    assert board.read().stats("v1").answers == 24  # type: ignore[union-attr]


def test_a_canary_is_judged_on_the_answers_of_every_replica(tmp_path: Path) -> None:
    """Each replica served 12 of the canary's answers: one replica's scrape (12 < 20) would
    wait to the timeout and roll back; all of them (24) promote."""
    registry = registry_with_two(tmp_path)
    board = EvidenceBoard(registry.control)
    for replica in ("a", "b"):
        board.publish(ReplicaEvidence.of(replica, _live({"v1": (0, 0)}), 1.0))
    polls = itertools.count()

    def read() -> LiveMetrics:
        if next(polls) == 1:  # traffic arrives once the canary started, split over the replicas
            for replica in ("a", "b"):
                board.publish(ReplicaEvidence.of(replica, _live({"v1": (50, 5), "v2": (12, 1)}), 2.0))
        live = board.read()
        assert live is not None
        return live

    ticks = itertools.count(step=10.0)
    controller = CanaryController(
        registry,
        read,
        CanaryConfig(min_requests=20, timeout_s=100),
        sleep=lambda s: None,
        clock=lambda: next(ticks),
    )
    verdict, current, canary = controller.run("v2")
    assert verdict == "promote" and canary == VersionStats(24, 2) and current == VersionStats(100, 10)
    assert registry.pointers()["current"] == "v2"


def test_a_replica_publishes_its_gateway_counts_and_its_last_ones_when_it_stops(tmp_path: Path) -> None:
    metrics = GatewayMetrics()
    metrics.student_answers.labels("v1", "false", "plural").inc(3)
    metrics.student_answers.labels("v1", "true", "plural").inc(1)
    metrics.audits.labels("v1", "agreed").inc(2)
    board = EvidenceBoard(FileControlStore(tmp_path))
    publisher = EvidencePublisher(board, metrics.canary_evidence, replica="r1", interval_s=3600)
    publisher.publish_once()
    live = EvidenceBoard(FileControlStore(tmp_path)).read()
    assert live is not None and live.stats("v1") == VersionStats(4, 1, 2, 2)
    assert live.by_route[("v1", "plural")] == VersionStats(4, 1)
    publisher.start()
    metrics.student_answers.labels("v1", "false", "plural").inc(5)
    publisher.stop()  # the answers since the last tick are published on the way out
    live = EvidenceBoard(FileControlStore(tmp_path)).read()
    assert live is not None and live.stats("v1").answers == 9


def test_a_canary_better_on_every_route_is_not_rolled_back_for_its_traffic_mix(tmp_path: Path) -> None:
    """The current version barely answers the drifted route (the route prior sends it to
    the teacher), the canary answers it: 0.15 escalation in total vs 0.07 is a different
    mix, not a worse model. Judged per route: clearly better on plural, the same elsewhere."""
    registry = registry_with_two(tmp_path)
    base = _live({"v1": (0, 0)})
    after = _live(
        {"v1": (102, 7), "v2": (40, 6)},
        {
            ("v1", "plural"): (2, 2),
            ("v1", "capital"): (100, 5),
            ("v2", "plural"): (20, 5),
            ("v2", "capital"): (20, 1),
        },
    )
    reads = iter([base, after])
    ticks = itertools.count(step=10.0)
    controller = CanaryController(
        registry,
        lambda: next(reads, after),
        CanaryConfig(min_requests=20, min_focus_requests=20, timeout_s=100),
        sleep=lambda s: None,
        clock=lambda: next(ticks),
    )
    verdict, current, canary = controller.run("v2", ["plural"])
    assert canary.escalation_rate > current.escalation_rate + 0.05  # the old overall rule's rollback
    assert verdict == "promote", controller.detail
    assert "focus routes clearly better" in controller.detail
