"""The ledger every ingress replica shares, so a rating can reach any replica.

A Serve deployment of one replica, built beside the ingress only when it has several
(``server.ingress_replicas > 1``). Replicas send what they issued in batches
(``ReplicatedLedger``); a replica asked to rate an answer it does not hold asks here. It
holds ``max_answers`` per ingress replica for ``ttl_s``, like each replica does, and is
where a rating's idempotence lives across replicas. Lost with its replica (Serve restarts
it empty): answers issued before then stay ratable on the replica that issued them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from gateway._ledger import IssuedAnswer, RatingsConfig, ResponseLedger

__all__ = ["SharedLedger"]


class SharedLedger:
    def __init__(self, config: RatingsConfig, ingress_replicas: int) -> None:
        self._config = config
        self._ledger = ResponseLedger(
            config.model_copy(update={"max_answers": config.max_answers * ingress_replicas})
        )
        self._arrived = asyncio.Event()

    async def record_many(self, answers: list[tuple[str, int, IssuedAnswer]]) -> None:
        for response_id, index, answer in answers:
            self._ledger.record(response_id, index, answer)
        self._arrived.set()
        self._arrived = asyncio.Event()

    async def find(self, response_id: str, index: int, principal: str) -> IssuedAnswer | None:
        """The answer; one not held yet is waited for up to ``mirror_wait_s`` (its batch may
        be on its way from the replica that issued it)."""
        deadline = time.monotonic() + self._config.mirror_wait_s
        while True:
            answer = self._ledger.find(response_id, index, principal)
            left = deadline - time.monotonic()
            if answer is not None or left <= 0:
                return answer
            arrived = self._arrived
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), timeout=left)

    async def mark(self, response_id: str, index: int, fingerprint: str) -> None:
        await self._ledger.mark(response_id, index, fingerprint)
