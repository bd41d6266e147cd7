"""One refresh at a time per registry: a lease in the registry's control store.

Two refreshes on one registry (the stack's own loop and a second one started by hand,
or a CronJob beside the loop Deployment) trained on the same two cores, slowed each other
tenfold and raced to promote. The lease lives where the registry's pointers live (its
``ControlStore``: ``refresh.lease`` beside them, or a row in the control tables), so every
process that can change the registry sees it:

* ``acquire`` creates it only if absent (compare-and-swap against "absent"): the holder,
  its host and pid, and a heartbeat time;
* the holder renews the heartbeat every ``ttl_s / 3`` from a background thread;
* a lease whose heartbeat is older than ``ttl_s`` belongs to a holder that crashed (a
  SIGKILLed trainer cannot release it), and so does one whose holder was a process on
  this host that is gone: the next ``acquire`` takes it over by swapping it against the
  revision it read (of two takers, one wins);
* ``release`` removes it only if it is still this holder's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from deploy._control import FILE_NAMES, ControlStore
from deploy.errors import RefreshInProgress

__all__ = ["LEASE_FILE", "RefreshLease"]

LEASE_KEY = "lease"
LEASE_FILE = FILE_NAMES[LEASE_KEY]


class RefreshLease:
    def __init__(
        self,
        control: ControlStore,
        *,
        holder: str,
        ttl_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._control = control
        self.holder = holder
        self.ttl_s = ttl_s
        self._clock = clock
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # ---- reading ------------------------------------------------------------------
    def current(self) -> dict[str, Any] | None:
        """The lease as written, or None when nobody holds it."""
        entry = self._control.read(LEASE_KEY)
        return dict(entry.value) if entry is not None else None

    def expired(self, lease: dict[str, Any]) -> bool:
        """Its heartbeat is older than the TTL, or its holder was a process on this host
        that no longer exists (a SIGKILLed ``distillery retrain``: no need to wait)."""
        if float(lease.get("heartbeat", 0.0)) + self.ttl_s < self._clock():
            return True
        return lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", 0)))

    # ---- holding ------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "token": self._token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": self._clock(),
            "ttl_s": self.ttl_s,
        }

    def acquire(self) -> None:
        """Takes the lease or raises ``RefreshInProgress`` naming the live holder."""
        if self._control.swap(LEASE_KEY, None, self._payload()):
            return self._start_renewing()
        entry = self._control.read(LEASE_KEY)
        if entry is not None and not self.expired(entry.value):
            lease = entry.value
            raise RefreshInProgress(
                f"another refresh holds the registry's lease: {lease.get('holder')} "
                f"(pid {lease.get('pid')} on {lease.get('host')}, heartbeat "
                f"{self._clock() - float(lease.get('heartbeat', 0)):.0f}s ago)"
            )
        # Expired (its holder died) or released meanwhile: take it over, against what we read.
        if not self._control.swap(LEASE_KEY, entry.revision if entry is not None else None, self._payload()):
            holder = (self.current() or {}).get("holder")
            raise RefreshInProgress(f"another refresh took the registry's lease first: {holder}")
        self._start_renewing()

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="refresh-lease", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with contextlib.suppress(Exception):  # the store is down a moment: the next beat retries
                self.renew()

    def _mine(self) -> str | None:
        """The revision of the lease if it is still this holder's."""
        entry = self._control.read(LEASE_KEY)
        if entry is None or entry.value.get("token") != self._token:
            return None
        return entry.revision

    def renew(self) -> None:
        revision = self._mine()
        if revision is None:
            return  # lost it (taken over after a stall): the holder finds out at release
        self._control.swap(LEASE_KEY, revision, self._payload())

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        revision = self._mine()
        if revision is not None:
            self._control.swap(LEASE_KEY, revision, None)

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
