"""The answers this ingress replica issued, kept so the application can rate them later.

``POST /v1/feedback`` may rate any answer (the student's or the teacher's), not only the
escalated and sampled ones the feedback stream already carries, so the rating event must
bring its own context: the request as the model saw it and the answer given. The ledger
holds it for ``ttl_s`` (bounded by ``max_answers``, oldest out first); an id it does not
hold is unknown or expired (404). It also answers idempotence: the same feedback twice
for one answer is recorded once.

The ledger is per replica (no shared state on the hot path): with several ingress
replicas, a rating must reach the replica that answered. One replica per host (the
default with the student in the ingress) or session affinity keeps that true;
docs/operations.md says so.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, Field

from router import GenerationRequest, Tier

__all__ = ["IssuedAnswer", "RatingsConfig", "ResponseLedger", "feedback_fingerprint"]


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


class ResponseLedger:
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

    def _expire(self) -> None:
        cutoff = self._clock() - self._config.ttl_s
        answers = self._answers
        while answers and (
            len(answers) > self._config.max_answers or next(iter(answers.values())).issued_at < cutoff
        ):
            answers.popitem(last=False)
