"""One refresh at a time per registry: a lease file beside the registry's pointers.

Two refreshes on one registry (the stack's own loop and a second one started by hand,
or a CronJob beside the loop Deployment) trained on the same two cores, slowed each other
tenfold and raced to promote. The lease lives where the registry lives, so every process
that can change the registry sees it, on one host or on a shared volume:

* ``acquire`` creates ``refresh.lease`` with ``O_CREAT | O_EXCL`` (atomic on local and NFS
  filesystems): the holder, its host and pid, and a heartbeat time;
* the holder renews the heartbeat every ``ttl_s / 3`` from a background thread;
* a lease whose heartbeat is older than ``ttl_s`` belongs to a holder that crashed (a
  SIGKILLed trainer cannot release it), and so does one whose holder was a process on
  this host that is gone: the next ``acquire`` takes it over by renaming it away first
  (only one rename of a path can succeed) and creating its own;
* ``release`` removes it only if it is still this holder's.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.errors import RefreshInProgress

__all__ = ["LEASE_FILE", "RefreshLease"]

LEASE_FILE = "refresh.lease"


class RefreshLease:
    def __init__(
        self,
        root: Path,
        *,
        holder: str,
        ttl_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = root / LEASE_FILE
        self.holder = holder
        self.ttl_s = ttl_s
        self._clock = clock
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # ---- reading ------------------------------------------------------------------
    def current(self) -> dict[str, Any] | None:
        """The lease as written, or None when nobody holds it."""
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data

    def expired(self, lease: dict[str, Any]) -> bool:
        """Its heartbeat is older than the TTL, or its holder was a process on this host
        that no longer exists (a SIGKILLed ``distillery retrain``: no need to wait)."""
        if float(lease.get("heartbeat", 0.0)) + self.ttl_s < self._clock():
            return True
        return lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", 0)))

    # ---- holding ------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "holder": self.holder,
            "token": self._token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": now,
            "ttl_s": self.ttl_s,
        }

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._payload(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> None:
        """Takes the lease or raises ``RefreshInProgress`` naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            return self._start_renewing()
        lease = self.current()
        if lease is not None and not self.expired(lease):
            raise RefreshInProgress(
                f"another refresh holds the registry's lease: {lease.get('holder')} "
                f"(pid {lease.get('pid')} on {lease.get('host')}, heartbeat "
                f"{self._clock() - float(lease.get('heartbeat', 0)):.0f}s ago)"
            )
        # Expired (its holder died) or vanished meanwhile: take it over.
        stale = self.path.with_name(f"{LEASE_FILE}.stale-{self._token}")
        try:
            os.rename(self.path, stale)
            stale.unlink(missing_ok=True)
        except FileNotFoundError:
            pass  # someone else moved it first; the create below decides
        if not self._create():
            holder = (self.current() or {}).get("holder")
            raise RefreshInProgress(f"another refresh took the registry's lease first: {holder}")
        self._start_renewing()

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="refresh-lease", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.renew()

    def renew(self) -> None:
        lease = self.current()
        if lease is None or lease.get("token") != self._token:
            return  # lost it (taken over after a stall): the holder finds out at release
        tmp = self.path.with_name(f".{LEASE_FILE}.{self._token}")
        tmp.write_text(json.dumps(self._payload()))
        os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        lease = self.current()
        if lease is not None and lease.get("token") == self._token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RefreshLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
