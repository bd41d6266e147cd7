"""Directories that hold Unix sockets, kept short enough for them.

A Unix socket's path may not exceed 107 bytes. Ray (``<temp dir>/session_.../sockets/...``)
and vLLM (ZMQ ``ipc://`` sockets in ``TMPDIR``) put sockets below directories this project
keeps under ``var/``; from a checkout deep in a home directory (or a test's temp path) they
fail at start ("AF_UNIX path length cannot exceed 107 bytes", "ipc path ... is longer than
107 characters").
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path

__all__ = ["UNIX_SOCKET_PATH_MAX", "socket_safe_dir"]

UNIX_SOCKET_PATH_MAX = 107


def socket_safe_dir(wanted: Path, room: int, prefix: str) -> Path:
    """``wanted`` (resolved) when sockets up to ``room`` characters below it fit; else a
    short directory in the system's temp dir named after ``wanted`` (so it keeps one),
    linked from ``wanted`` when nothing is there yet (its logs stay findable under var/)."""
    resolved = wanted.resolve()
    if len(str(resolved)) + room <= UNIX_SOCKET_PATH_MAX:
        return resolved
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())  # TMPDIR may be long
    short = base / f"{prefix}-{digest}"
    short.mkdir(parents=True, exist_ok=True)
    if not resolved.exists() and not resolved.is_symlink():
        resolved.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a read-only var/: the short one still works
            resolved.symlink_to(short, target_is_directory=True)
    return short
