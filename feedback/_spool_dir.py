"""Claims a spool directory per producer process, reusing ones whose owner is gone.

A replica that dies leaves its spool behind; the next producer on the host takes over the
first unclaimed directory (an advisory ``flock`` marks a claim), so spooled events are
re-sent by whoever comes next instead of being orphaned.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

__all__ = ["SpoolClaim", "claim_spool_dir"]


class SpoolClaim:
    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path = path
        self._handle = handle

    def release(self) -> None:
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()


def claim_spool_dir(base: Path, max_slots: int = 64) -> SpoolClaim:
    base.mkdir(parents=True, exist_ok=True)
    for slot in range(max_slots):
        path = base / str(slot)
        path.mkdir(exist_ok=True)
        handle = (path / ".owner").open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        return SpoolClaim(path, handle)
    raise RuntimeError(f"all {max_slots} spool slots under {base} are claimed")
