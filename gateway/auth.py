"""API keys: who may call inference, who may change the system.

Keys are stored only as SHA-256 digests (a leaked config file does not leak a key); a key
is high-entropy random, so a plain digest is enough — no salt or KDF needed, unlike a
password. Lookups hash the presented key once and compare it against every stored digest
with ``hmac.compare_digest`` without stopping early, so neither the comparison nor the
position of the match leaks timing. The key's *name* (never the key, never the digest)
is what logs, metrics, limits and the audit log see.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal

from pydantic import BaseModel, Field, field_validator

__all__ = ["ApiKey", "AuthConfig", "KeyRing", "Principal", "Scope", "hash_key", "new_key"]

Scope = Literal["inference", "admin"]
KEY_PREFIX = "dk-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe, with a prefix secret scanners can match."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKey(BaseModel):
    """One key as configured: a name, its SHA-256 digest and what it may do.

    Parameters:
        name (`str`): who holds it; appears in logs, limits and the audit log.
        sha256 (`str`): hex digest of the key (``distillery keys new`` prints both).
        scopes (`list[Scope]`, defaults to ``["inference"]``): ``inference`` for
            ``/v1/*``, ``admin`` for ``/admin/*``. Give an operator key both if it should
            also call the model.
        max_concurrent (`int | None`): this key's concurrent-request limit; defaults to
            ``limits.max_concurrent_per_key``.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    sha256: str
    scopes: list[Scope] = ["inference"]
    max_concurrent: int | None = Field(default=None, ge=1)

    @field_validator("sha256")
    @classmethod
    def _is_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("sha256 must be the 64-hex-digit digest of the key, not the key itself")
        return value


class AuthConfig(BaseModel):
    """API keys. An empty list is local-development mode: no key is required (the gateway
    says so loudly at start-up and in ``/healthz``).

    Parameters:
        keys (`list[ApiKey]`): e.g. ``DISTILLERY_AUTH__KEYS='[{"name": "app",
            "sha256": "..."}]'`` or the ``auth.keys`` list in the YAML config.
        public_metrics (`bool`, defaults to True): ``/metrics`` needs no key (Prometheus
            scrapes it from inside the cluster); set False to require an admin key.
    """

    keys: list[ApiKey] = []
    public_metrics: bool = True

    @field_validator("keys")
    @classmethod
    def _unique(cls, keys: list[ApiKey]) -> list[ApiKey]:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        if len({k.sha256 for k in keys}) != len(keys):
            raise ValueError("the same key digest is configured twice")
        return keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


class Principal(BaseModel):
    """Who is calling, as far as the rest of the gateway needs to know."""

    name: str
    scopes: frozenset[Scope]
    max_concurrent: int | None = None


ANONYMOUS = Principal(name="anonymous", scopes=frozenset(("inference", "admin")))


class KeyRing:
    """Resolves a presented key to its principal (or None) in constant time."""

    def __init__(self, config: AuthConfig) -> None:
        self._entries = [(bytes.fromhex(k.sha256), k) for k in config.keys]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def resolve(self, presented: str | None) -> Principal | None:
        if not self._entries:
            return ANONYMOUS
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found: ApiKey | None = None
        for stored, key in self._entries:
            if hmac.compare_digest(stored, digest):  # no early exit: every entry is compared
                found = key
        if found is None:
            return None
        return Principal(name=found.name, scopes=frozenset(found.scopes), max_concurrent=found.max_concurrent)
