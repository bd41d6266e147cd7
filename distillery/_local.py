"""The embedded stack of ``distillery run``: broker, feedback consumer, refresh loop and
the Serve app, supervised, and stopped in order on SIGTERM or SIGINT.

Supervision: each embedded service (the Tansu broker, the consumer thread, the loop
thread) is checked every second; one that died is restarted with exponential backoff
(1 s doubling to 30 s, reset once it has run for a minute), and the death and the restart
are each logged once, not on every failed reconnect. The broker comes back on the same
port, so the gateway's producer re-sends its spool into it without a restart of the stack
and the consumer's static assignment re-reads the lost log (``feedback._consumer``).

Shutdown (SIGTERM from Kubernetes, systemd or ``docker stop``; SIGINT from Ctrl-C; SIGHUP
when the terminal goes away): stop
supervising, stop the loop (a refresh in progress is abandoned: its scratch directory is
never registered), shut Serve down (replicas finish the requests in flight; the ingress
flushes its producer and spools what the broker did not confirm), stop the consumer,
Ray and the broker, and exit 0 with no child process left.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

__all__ = ["BrokerService", "Service", "ShutdownSignal", "Supervisor", "ThreadService"]

logger = logging.getLogger("distillery.stack")


class Service(Protocol):
    name: str

    def start(self) -> None: ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


class BrokerService:
    """The embedded Tansu broker (a subprocess); restarted on the same port."""

    name = "embedded broker"

    def __init__(self, broker: Any, topics: list[str], partitions: int = 1) -> None:
        self.broker = broker
        self._topics = topics
        self._partitions = partitions
        self._started = False

    def start(self) -> None:
        if self._started:
            self.broker.kill()  # reap the dead process before listening again on its port
        self.broker.start()
        self._started = True
        from feedback import ensure_topics

        # Memory storage: a restarted broker has no topics until someone creates them.
        ensure_topics(self.broker.bootstrap, self._topics, partitions=self._partitions)

    def alive(self) -> bool:
        return bool(self.broker.alive())

    def stop(self) -> None:
        self.broker.stop()


class ThreadService:
    """A long-running function in a daemon thread (the consumer, the loop)."""

    def __init__(self, name: str, make: Callable[[], tuple[Callable[[], None], Callable[[], None]]]) -> None:
        """``make`` returns (run, stop): a fresh runner for every (re)start."""
        self.name = name
        self._make = make
        self._thread: threading.Thread | None = None
        self._stop_fn: Callable[[], None] | None = None

    def start(self) -> None:
        run, stop = self._make()
        self._stop_fn = stop
        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._stop_fn is not None:
            self._stop_fn()
        if self._thread is not None:
            self._thread.join(timeout=15)


@dataclass
class _Watch:
    service: Service
    backoff_s: float = 1.0
    next_try: float = 0.0
    down_since: float | None = None
    up_since: float = field(default_factory=time.monotonic)
    restarts: int = 0


class Supervisor:
    """Restarts dead services with backoff; logs each death and each recovery once."""

    def __init__(
        self,
        services: list[Service],
        *,
        poll_s: float = 1.0,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self._watches = [_Watch(s) for s in services]
        self._poll_s = poll_s
        self._max_backoff_s = max_backoff_s
        self._healthy_after_s = healthy_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def restarts(self) -> dict[str, int]:
        return {w.service.name: w.restarts for w in self._watches}

    def check(self) -> None:
        """One pass over the services (the thread calls it every ``poll_s``)."""
        now = time.monotonic()
        for w in self._watches:
            if w.service.alive():
                if w.down_since is None and now - w.up_since > self._healthy_after_s:
                    w.backoff_s = 1.0
                continue
            if w.down_since is None:
                w.down_since, w.next_try = now, now + w.backoff_s
                logger.warning("%s died; restarting it in %.0fs", w.service.name, w.backoff_s)
            if now < w.next_try:
                continue
            try:
                w.service.start()
            except Exception as exc:
                w.backoff_s = min(self._max_backoff_s, w.backoff_s * 2)
                w.next_try = now + w.backoff_s
                logger.warning(
                    "%s did not restart (%s); next attempt in %.0fs",
                    w.service.name,
                    f"{type(exc).__name__}: {exc}"[:200],
                    w.backoff_s,
                )
                continue
            w.restarts += 1
            logger.warning(
                "%s restarted after %.1fs down (restart %d)", w.service.name, now - w.down_since, w.restarts
            )
            w.down_since, w.up_since = None, time.monotonic()
            w.backoff_s = min(self._max_backoff_s, w.backoff_s * 2)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.check()
            except Exception:
                logger.exception("supervisor pass failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class ShutdownSignal:
    """SIGTERM, SIGINT and SIGHUP become one flag the main thread waits on.

    SIGHUP: the terminal ``distillery run`` was started from went away. Its default action
    ends the process without the ordered stop, and a replica's engine subprocess can
    outlive it (seen: a vLLM EngineCore, 1.8 GB resident, orphaned under init).

    The handler only assigns an attribute: it runs in the main thread between two bytecodes,
    possibly while that thread holds a lock, so it must take none. It once called
    ``threading.Event.set``: two SIGINTs close together (a shell's Ctrl-C reaching both
    ``timeout`` and ``distillery``, which ``timeout`` forwards) ran the second handler inside
    the first one's ``Event.set``, which waited forever on the lock its own thread held: the
    process hung and never stopped. The main thread polls the flag instead.

    Installed before the stack starts; ``gateway.app.start_ray`` keeps it across
    ``ray.init``, which sets its own SIGTERM handler (that one aborted the process and left
    the embedded broker running as an orphan)."""

    POLL_S = 0.2

    def __init__(self) -> None:
        self.received: str | None = None
        self.starting = False
        """While the stack starts, a first signal waits for the start to finish (then it
        stops in order); a second one stops waiting (KeyboardInterrupt: what has started
        is stopped as the start unwinds)."""

    def install(self) -> ShutdownSignal:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:  # the first signal names the stop; repeats change nothing
            self.received = signal.Signals(signum).name
        elif self.starting:
            self.starting = False
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def wait(self, timeout_s: float | None = None) -> str | None:
        """The signal's name once one arrived (None if ``timeout_s`` ran out first)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.received is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(self.POLL_S)
        return self.received
