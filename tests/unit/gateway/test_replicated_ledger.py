"""Ratings from any ingress replica: each replica's ledger mirrored to the shared one (pure
logic: two ``ReplicatedLedger`` over one in-process ``SharedLedger``; the Serve path is in
tests/integration/test_ingress_replicas.py)."""

from __future__ import annotations

import pytest

from gateway._ledger import IssuedAnswer, RatingsConfig, ReplicatedLedger, ResponseLedger
from gateway._ledger_server import SharedLedger
from router import GenerationRequest

CONFIG = RatingsConfig(ttl_s=60, mirror_flush_s=0.01, mirror_wait_s=0.5)


def _answer(principal: str = "app") -> IssuedAnswer:
    return IssuedAnswer(
        request=GenerationRequest(prompt="order number?"),
        tier="student",
        student_answer="42",
        student_version="v1",
        teacher_answer=None,
        teacher_version=None,
        label="order_number",
        principal=principal,
    )


class Down:
    """A shared ledger that cannot be reached (its replica restarting)."""

    def __init__(self, behind: SharedLedger) -> None:
        self.behind = behind
        self.up = False

    async def record_many(self, answers: list[tuple[str, int, IssuedAnswer]]) -> None:
        if not self.up:
            raise ConnectionError("ledger replica unavailable")
        await self.behind.record_many(answers)

    async def find(self, response_id: str, index: int, principal: str) -> IssuedAnswer | None:
        if not self.up:
            raise ConnectionError("ledger replica unavailable")
        return await self.behind.find(response_id, index, principal)

    async def mark(self, response_id: str, index: int, fingerprint: str) -> None:
        if not self.up:
            raise ConnectionError("ledger replica unavailable")
        await self.behind.mark(response_id, index, fingerprint)


def _replicas(mirror: object) -> tuple[ReplicatedLedger, ReplicatedLedger]:
    a = ReplicatedLedger(ResponseLedger(CONFIG), mirror, CONFIG)  # type: ignore[arg-type]
    b = ReplicatedLedger(ResponseLedger(CONFIG), mirror, CONFIG)  # type: ignore[arg-type]
    return a, b


@pytest.mark.asyncio
async def test_an_answer_issued_by_one_replica_is_rated_through_another_once() -> None:
    a, b = _replicas(SharedLedger(CONFIG, 2))
    a.record("chatcmpl-1", 0, _answer())
    await a.flush()
    found = await b.lookup("chatcmpl-1", 0, "app")
    assert found is not None and found.student_answer == "42"
    assert await b.lookup("chatcmpl-1", 0, "another key") is None  # the per-key rule holds
    await b.mark("chatcmpl-1", 0, "fp-1")
    again = await a.lookup("chatcmpl-1", 0, "app")  # the repeat reaches the issuing replica
    assert again is not None and again.last_rating == "fp-1"


@pytest.mark.asyncio
async def test_a_rating_that_overtakes_its_answers_batch_waits_for_it() -> None:
    a, b = _replicas(SharedLedger(CONFIG, 2))
    a.start()
    try:
        a.record("chatcmpl-2", 0, _answer())  # not sent yet: the flusher sends it shortly
        found = await b.lookup("chatcmpl-2", 0, "app")
        assert found is not None
    finally:
        await a.stop()


@pytest.mark.asyncio
async def test_an_id_never_issued_is_unknown_after_the_wait() -> None:
    _, b = _replicas(SharedLedger(CONFIG, 2))
    assert await b.lookup("chatcmpl-none", 0, "app") is None


@pytest.mark.asyncio
async def test_with_the_shared_ledger_down_answers_stay_ratable_where_issued_and_are_sent_later() -> None:
    shared = SharedLedger(CONFIG, 2)
    mirror = Down(shared)
    a, b = _replicas(mirror)
    a.record("chatcmpl-3", 0, _answer())
    await a.flush()  # fails: kept for the next flush
    assert await a.lookup("chatcmpl-3", 0, "app") is not None  # its own replica still has it
    assert await b.lookup("chatcmpl-3", 0, "app") is None
    mirror.up = True
    await a.flush()
    assert await b.lookup("chatcmpl-3", 0, "app") is not None


@pytest.mark.asyncio
async def test_the_shared_ledger_holds_each_replicas_share() -> None:
    config = RatingsConfig(ttl_s=60, max_answers=3, mirror_wait_s=0.0)
    shared = SharedLedger(config, 2)
    await shared.record_many([(f"r{i}", 0, _answer()) for i in range(7)])
    held = [i for i in range(7) if await shared.find(f"r{i}", 0, "app") is not None]
    assert held == [1, 2, 3, 4, 5, 6]  # 3 per replica x 2 replicas, oldest out first
