"""Admission limits: how much one request, one key and one replica may take.

Overload must shed, not queue: past ``max_in_flight`` requests per ingress replica a new
request gets 503 at once (with ``Retry-After``) instead of waiting behind work it cannot
overtake, so the latency of what *is* accepted stays bounded. A key over its own
concurrency gets 429, so one noisy client cannot take the whole replica. Counts are per
ingress replica (Serve state lives in the replica); with N ingress replicas the effective
bounds are N times these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["Admission", "ConcurrencyLimiter", "LimitsConfig"]


class LimitsConfig(BaseModel):
    """Parameters:
    max_body_bytes (`int`, defaults to 1 MiB): larger request bodies get 413.
    max_in_flight (`int`, defaults to 128): concurrent inference requests per ingress
        replica; beyond it, 503 ``overloaded``.
    max_concurrent_per_key (`int`, defaults to 64): per API key (or for everyone
        together in development mode); beyond it, 429 ``rate_limited``.
    retry_after_s (`int`, defaults to 1): the ``Retry-After`` sent with 429/503.
    """

    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_in_flight: int = Field(default=128, ge=1)
    max_concurrent_per_key: int = Field(default=64, ge=1)
    retry_after_s: int = Field(default=1, ge=1)


Admission = Literal["admitted", "overloaded", "rate_limited"]


@dataclass
class ConcurrencyLimiter:
    """Counts requests in flight, globally and per key. Single-threaded by design (the
    ingress's event loop), so plain integers need no lock."""

    max_in_flight: int
    default_per_key: int
    in_flight: int = 0
    per_key: dict[str, int] = field(default_factory=dict)

    def try_acquire(self, key: str, key_limit: int | None = None) -> Admission:
        if self.in_flight >= self.max_in_flight:
            return "overloaded"
        held = self.per_key.get(key, 0)
        if held >= (key_limit or self.default_per_key):
            return "rate_limited"
        self.in_flight += 1
        self.per_key[key] = held + 1
        return "admitted"

    def release(self, key: str) -> None:
        self.in_flight -= 1
        left = self.per_key.get(key, 1) - 1
        if left <= 0:
            self.per_key.pop(key, None)  # the dict stays as small as the set of active keys
        else:
            self.per_key[key] = left
