"""Canary evidence from every ingress replica, not from whichever one a scrape reached.

Each ingress replica publishes its own per-version counts (answers, escalations, audits and
their agreement, answers per route) as a typed ``ReplicaEvidence`` document in the
registry's control store (key ``evidence/<replica>``: a file ``evidence/<replica>.json``
under the registry, or a row in the control tables), rewritten about once a second. The
controller's ``EvidenceBoard`` sums them. A scrape of ``/metrics`` through the load
balancer reads one replica's counters: with two replicas the canary saw about half its
answers, and a different half at each poll. The control store is already what every
replica follows for its pointers, so the evidence needs no other shared service.

Counters only grow: the board remembers the last evidence of every replica it has seen, so
a replica that stops (scaled down, its node lost) keeps what it counted and the sums never
fall; a restarted replica publishes under a new id, starting from zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from pydantic import BaseModel, ValidationError

from deploy._canary import LiveMetrics, VersionStats
from deploy._control import ControlStore

__all__ = ["EvidenceBoard", "EvidencePublisher", "ReplicaEvidence", "combine_live", "replica_id"]

logger = logging.getLogger(__name__)

EVIDENCE_DIR = "evidence"


class Counts(BaseModel):
    answers: float = 0.0
    escalated: float = 0.0
    audited: float = 0.0
    agreed: float = 0.0


class RouteCounts(BaseModel):
    version: str
    route: str
    answers: float = 0.0
    escalated: float = 0.0


class ReplicaEvidence(BaseModel):
    """One replica's cumulative counts since it started (the file on disk)."""

    replica: str
    written_at: float
    versions: dict[str, Counts] = {}
    routes: list[RouteCounts] = []
    gate_agreement: dict[str, float] = {}
    audits_on: bool = False

    @classmethod
    def of(cls, replica: str, live: LiveMetrics, now: float) -> ReplicaEvidence:
        return cls(
            replica=replica,
            written_at=now,
            versions={
                v: Counts(answers=s.answers, escalated=s.escalated, audited=s.audited, agreed=s.agreed)
                for v, s in live.versions.items()
            },
            routes=[
                RouteCounts(version=v, route=r, answers=s.answers, escalated=s.escalated)
                for (v, r), s in live.by_route.items()
            ],
            gate_agreement=dict(live.gate_agreement),
            audits_on=live.audits_on,
        )

    def live(self) -> LiveMetrics:
        return LiveMetrics(
            versions={
                v: VersionStats(c.answers, c.escalated, c.audited, c.agreed) for v, c in self.versions.items()
            },
            gate_agreement=dict(self.gate_agreement),
            audits_on=self.audits_on,
            by_route={(r.version, r.route): VersionStats(r.answers, r.escalated) for r in self.routes},
        )


def _add(a: VersionStats, b: VersionStats) -> VersionStats:
    return VersionStats(
        a.answers + b.answers, a.escalated + b.escalated, a.audited + b.audited, a.agreed + b.agreed
    )


def combine_live(parts: Iterable[LiveMetrics]) -> LiveMetrics:
    """The replicas' counts summed; a version's gate agreement is the same on every replica
    (any one's); the canary is audited if any replica audits it."""
    versions: dict[str, VersionStats] = {}
    by_route: dict[tuple[str, str], VersionStats] = {}
    gate: dict[str, float] = {}
    audits_on = False
    for part in parts:
        for v, s in part.versions.items():
            versions[v] = _add(versions.get(v, VersionStats()), s)
        for key, s in part.by_route.items():
            by_route[key] = _add(by_route.get(key, VersionStats()), s)
        gate.update(part.gate_agreement)
        audits_on = audits_on or part.audits_on
    return LiveMetrics(versions, gate, audits_on, by_route)


def replica_id() -> str:
    """Unique per process start, so a restarted replica never resumes another's counts."""
    host = os.uname().nodename.replace("/", "_")
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class EvidenceBoard:
    """The replicas' evidence in a control store: replicas publish, the controller reads."""

    def __init__(self, control: ControlStore) -> None:
        self._control = control
        self._seen: dict[str, ReplicaEvidence] = {}

    def publish(self, evidence: ReplicaEvidence) -> None:
        """One document per replica, replaced whole (a reader never sees half of one)."""
        self._control.put(f"{EVIDENCE_DIR}/{evidence.replica}", evidence.model_dump(mode="json"))

    def prune(self, now: float, max_age_s: float = 7 * 86400.0) -> None:
        """Evidence of replicas gone for ``max_age_s`` (no canary runs that long); never
        sooner, so a reader never loses counts mid-canary."""
        for key, entry in self._control.scan(EVIDENCE_DIR).items():
            if now - entry.updated_at > max_age_s:
                self._control.put(key, None)

    def read(self) -> LiveMetrics | None:
        """Every replica's counts summed (those seen before and gone since included);
        None while no replica has published."""
        for entry in self._control.scan(EVIDENCE_DIR).values():
            try:
                evidence = ReplicaEvidence.model_validate(entry.value)
            except ValidationError:
                continue  # not ours
            seen = self._seen.get(evidence.replica)
            if seen is None or evidence.written_at >= seen.written_at:
                self._seen[evidence.replica] = evidence
        if not self._seen:
            return None
        return combine_live(e.live() for e in self._seen.values())


class EvidencePublisher:
    """A replica's side: ``collect()`` (its own counts) written to the board every
    ``interval_s`` on a daemon thread, and once more when stopped."""

    def __init__(
        self,
        board: EvidenceBoard,
        collect: Callable[[], LiveMetrics],
        *,
        replica: str | None = None,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replica = replica or replica_id()
        self._board = board
        self._collect = collect
        self._interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_once(self) -> None:
        self._board.publish(ReplicaEvidence.of(self.replica, self._collect(), self._clock()))

    def start(self) -> EvidencePublisher:
        with contextlib.suppress(Exception):  # housekeeping: never what stops a replica
            self._board.prune(self._clock())
        self._thread = threading.Thread(target=self._run, name="evidence-publisher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.publish_once()
            except Exception as exc:  # a full disk, the store down: serving goes on; retried
                if not failing:
                    logger.warning("could not publish this replica's canary evidence (retrying): %s", exc)
                failing = True
            else:
                if failing:
                    logger.warning("publishing this replica's canary evidence again")
                failing = False
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.publish_once()  # the last counts, so nothing this replica served is missing
