"""A throwaway PostgreSQL cluster on a loopback port, for the store's tests and benchmarks.

The PostgreSQL counterpart of the embedded Tansu broker: ``initdb`` into a fresh
directory, ``pg_ctl start`` on a free port, trust authentication on 127.0.0.1 only.
PostgreSQL refuses to run as root, so as root it runs as the package's ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from feedback.errors import StoreUnavailable

__all__ = ["LocalPostgres", "postgres_bindir"]


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are (PATH, then Debian's versioned directories)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalPostgres:
    """``LocalPostgres.create()`` initialises and starts one; ``stop``/``start`` take it away
    for a while (the store's outage tests); ``remove`` stops it and deletes its files."""

    def __init__(self, bindir: Path, base: Path, prefix: list[str]) -> None:
        self.port = _free_port()
        self.base = base
        self._ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(base / "data")]
        self._opts = f"-p {self.port} -k {base / 'sock'} -c listen_addresses=127.0.0.1"
        self._log = str(base / "log")
        self.dsn = f"postgresql://distillery@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls, prefix_name: str = "distillery-pg-") -> LocalPostgres:
        """Raises ``StoreUnavailable``, saying why, where no server can be started here."""
        bindir = postgres_bindir()
        if bindir is None:
            raise StoreUnavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        # Not under a private temp dir: the postgres user must reach it.
        base = Path(tempfile.mkdtemp(prefix=prefix_name))
        (base / "sock").mkdir()
        run_as: list[str] = []
        if os.geteuid() == 0:
            for path in (base, base / "sock"):
                shutil.chown(path, "postgres")
            base.chmod(0o755)
            run_as = ["runuser", "-u", "postgres", "--"]
        server = cls(bindir, base, run_as)
        initdb = [str(bindir / "initdb"), "-D", str(base / "data"), "-A", "trust", "-U", "distillery"]
        try:
            subprocess.run(
                [*run_as, *initdb],
                check=True,
                capture_output=True,
                timeout=120,
            )
            server.start()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, LookupError) as exc:
            detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[:300]
            shutil.rmtree(base, ignore_errors=True)
            raise StoreUnavailable(f"PostgreSQL could not start here: {exc} {detail}") from None
        return server

    def start(self) -> None:
        subprocess.run(
            [*self._ctl, "-w", "-l", self._log, "-o", self._opts, "start"],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self._ctl, "-m", mode, "-w", "stop"], capture_output=True, timeout=60)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
