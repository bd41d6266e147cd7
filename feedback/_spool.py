"""An append-only, fsync'd disk spool for events the broker could not take.

Layout: ``<dir>/spool.log`` holds one record per line (the event's wire JSON) and
``<dir>/spool.cursor`` the byte offset up to which records were re-sent and acknowledged.
Records are read back strictly in append order. When everything is acknowledged both
files are reset, so the spool does not grow without bound across outages. A torn last
line (a crash mid-append) is cut off on open: its event was never acknowledged to anyone,
because ``append`` returns only after ``fsync``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from feedback.errors import SpoolWriteError

__all__ = ["DiskSpool"]


class DiskSpool:
    def __init__(self, directory: Path, *, max_bytes: int = 1 << 30) -> None:
        self._dir = directory
        self._log = directory / "spool.log"
        self._cursor_file = directory / "spool.cursor"
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._log.touch(exist_ok=True)
            self._repair()
        except OSError as exc:
            raise SpoolWriteError(f"cannot open spool at {directory}: {exc}") from exc
        self._cursor = self._read_cursor()
        self._depth = self._count_pending()

    def _repair(self) -> None:
        data = self._log.read_bytes()
        if data and not data.endswith(b"\n"):
            with self._log.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def _read_cursor(self) -> int:
        try:
            value = int(self._cursor_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            value = 0
        return min(value, self._log.stat().st_size)

    def _count_pending(self) -> int:
        with self._log.open("rb") as f:
            f.seek(self._cursor)
            return sum(1 for _ in f)

    @property
    def depth(self) -> int:
        """Records appended and not yet acknowledged."""
        return self._depth

    def append(self, payloads: Sequence[bytes]) -> None:
        """Durably appends; returns only after fsync. Raises ``SpoolWriteError`` otherwise."""
        if not payloads:
            return
        blob = b"".join(p.replace(b"\n", b" ") + b"\n" for p in payloads)
        with self._lock:
            try:
                if self._log.stat().st_size + len(blob) > self._max_bytes:
                    raise SpoolWriteError(f"spool {self._log} is full ({self._max_bytes} bytes)")
                with self._log.open("ab") as f:
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                raise SpoolWriteError(f"cannot write spool {self._log}: {exc}") from exc
            self._depth += len(payloads)

    def peek(self, max_items: int) -> tuple[list[bytes], int]:
        """Up to ``max_items`` pending records in order, and the offset to ``ack`` them."""
        with self._lock, self._log.open("rb") as f:
            f.seek(self._cursor)
            out: list[bytes] = []
            end = self._cursor
            for line in f:
                if len(out) >= max_items:
                    break
                out.append(line.rstrip(b"\n"))
                end += len(line)
            return out, end

    def ack(self, end_offset: int, count: int) -> None:
        """Marks records up to ``end_offset`` as re-sent; compacts when nothing is left."""
        with self._lock:
            self._cursor = end_offset
            self._depth = max(0, self._depth - count)
            if self._cursor >= self._log.stat().st_size:
                with self._log.open("r+b") as f:
                    f.truncate(0)
                    os.fsync(f.fileno())
                self._cursor = 0
                self._depth = 0
            tmp = self._cursor_file.with_suffix(".tmp")
            tmp.write_text(str(self._cursor))
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self._cursor_file)
