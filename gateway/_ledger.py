"""The answers this ingress replica issued, kept so the application can rate them later.

``POST /v1/feedback`` may rate any answer (the student's or the teacher's), not only the
escalated and sampled ones the feedback stream already carries, so the rating event must
bring its own context: the request as the model saw it and the answer given. The ledger
holds it for ``ttl_s`` (bounded by ``max_answers``, oldest out first); an id it does not
hold is unknown or expired (404). It also answers idempotence: the same feedback twice
for one answer is recorded once.

Each replica records into its own ledger (no shared state on the hot path). With several
ingress replicas a rating reaches whichever replica the load balancer picks, so each
replica also mirrors what it issued, in batches every ``mirror_flush_s``, to one shared
ledger (``gateway._ledger_server.SharedLedger``, a Serve deployment of one replica, built
only when ``server.ingress_replicas > 1``): a replica that does not hold the answer asks
it, and it owns the rating's idempotence across replicas. A rating that arrives before the
answer's batch did waits for it (``mirror_wait_s``), so an answer is ratable at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, Field

from router import GenerationRequest, Tier

__all__ = [
    "IssuedAnswer",
    "Ledger",
    "LedgerMirror",
    "RatingsConfig",
    "ReplicatedLedger",
    "ResponseLedger",
    "feedback_fingerprint",
]

logger = logging.getLogger(__name__)


class RatingsConfig(BaseModel):
    """Application feedback (``POST /v1/feedback``).

    Parameters:
        enabled (`bool`, defaults to True): keep issued answers so they can be rated (needs
            the feedback stream: ratings travel with the events).
        ttl_s (`float`, defaults to 3600): how long an answer can be rated.
        max_answers (`int`, defaults to 20000): answers held per ingress replica; past it
            the oldest are forgotten early (their ratings then get 404).
    """

    enabled: bool = True
    ttl_s: float = Field(default=3600.0, gt=0.0)
    max_answers: int = Field(default=20_000, ge=1)
    mirror_flush_s: float = Field(default=0.05, gt=0.0)
    """With several ingress replicas: how often a replica sends what it issued to the
    shared ledger (one call per batch, off the request path)."""
    mirror_wait_s: float = Field(default=1.0, ge=0.0)
    """How long the shared ledger waits for an answer it does not hold yet (its batch may
    still be on the way) before the rating is a 404."""


@dataclass
class IssuedAnswer:
    request: GenerationRequest
    tier: Tier
    student_answer: str | None
    student_version: str | None
    teacher_answer: str | None
    teacher_version: str | None
    label: str | None
    principal: str
    issued_at: float = 0.0
    """Set by the ledger when it records the answer."""
    last_rating: str | None = None
    """Fingerprint of the feedback last recorded for this answer (a repeat is a no-op)."""


def feedback_fingerprint(
    response_id: str, index: int, rating: float, correction: str | None, comment: str | None
) -> str:
    """One feedback on one answer, as 32 hex digits: its id (``fb-<this>``), the same for an
    identical repeat, and what ``last_rating`` compares."""
    blob = f"{response_id}\x00{index}\x00{rating!r}\x00{correction or ''}\x00{comment or ''}"
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Ledger(Protocol):
    """What ``/v1/feedback`` needs: answers recorded as issued, found and marked rated."""

    def record(self, response_id: str, index: int, answer: IssuedAnswer) -> None: ...

    async def lookup(self, response_id: str, index: int, principal: str) -> IssuedAnswer | None: ...

    async def mark(self, response_id: str, index: int, fingerprint: str) -> None: ...


class ResponseLedger:
    """One process's answers, oldest out first."""

    def __init__(self, config: RatingsConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._answers: OrderedDict[tuple[str, int], IssuedAnswer] = OrderedDict()

    def record(self, response_id: str, index: int, answer: IssuedAnswer) -> None:
        answer.issued_at = self._clock()
        self._answers[(response_id, index)] = answer
        self._expire()

    def find(self, response_id: str, index: int, principal: str) -> IssuedAnswer | None:
        """The answer, if it is held, not expired, and was issued to ``principal`` (another
        key's answers are as unknown as ids never issued)."""
        self._expire()
        answer = self._answers.get((response_id, index))
        if answer is None or answer.principal != principal:
            return None
        return answer

    async def lookup(self, response_id: str, index: int, principal: str) -> IssuedAnswer | None:
        return self.find(response_id, index, principal)

    async def mark(self, response_id: str, index: int, fingerprint: str) -> None:
        answer = self._answers.get((response_id, index))
        if answer is not None:
            answer.last_rating = fingerprint

    def _expire(self) -> None:
        cutoff = self._clock() - self._config.ttl_s
        answers = self._answers
        while answers and (
            len(answers) > self._config.max_answers or next(iter(answers.values())).issued_at < cutoff
        ):
            answers.popitem(last=False)


class LedgerMirror(Protocol):
    """The ledger every replica shares (``SharedLedger`` through its Serve handle)."""

    async def record_many(self, answers: list[tuple[str, int, IssuedAnswer]]) -> None: ...

    async def find(self, response_id: str, index: int, principal: str) -> IssuedAnswer | None: ...

    async def mark(self, response_id: str, index: int, fingerprint: str) -> None: ...


class ReplicatedLedger:
    """This replica's ledger, mirrored to the shared one: what it issued is sent in batches
    by a background task, and a lookup asks the shared ledger, which knows every replica's
    answers and the last rating of each wherever it arrived."""

    def __init__(self, local: ResponseLedger, mirror: LedgerMirror, config: RatingsConfig) -> None:
        self._local = local
        self._mirror = mirror
        self._config = config
        self._pending: list[tuple[str, int, IssuedAnswer]] = []
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> ReplicatedLedger:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def record(self, response_id: str, index: int, answer: IssuedAnswer) -> None:
        self._local.record(response_id, index, answer)
        self._pending.append((response_id, index, answer))
        if len(self._pending) > self._config.max_answers:  # the mirror is down: keep the newest
            del self._pending[: len(self._pending) - self._config.max_answers]

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self._mirror.record_many(batch)
        except Exception:
            self._pending = batch + self._pending  # sent again at the next flush
            if not self._failing:
                logger.warning("the shared ledger is unreachable; answers are ratable on this replica only")
            self._failing = True
            return
        self._failing = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._config.mirror_flush_s)
            await self.flush()

    async def lookup(self, response_id: str, index: int, principal: str) -> IssuedAnswer | None:
        local = self._local.find(response_id, index, principal)
        try:
            shared = await self._mirror.find(response_id, index, principal)
        except Exception:
            logger.warning("the shared ledger is unreachable; looking up this replica's answers only")
            return local
        if shared is None:
            return local  # issued here and not mirrored yet (or the shared ledger restarted)
        if local is not None and shared.last_rating is None:
            shared.last_rating = local.last_rating
        return shared

    async def mark(self, response_id: str, index: int, fingerprint: str) -> None:
        await self._local.mark(response_id, index, fingerprint)
        with contextlib.suppress(Exception):  # recorded already; a repeat may record again
            await self._mirror.mark(response_id, index, fingerprint)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
