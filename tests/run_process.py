"""``distillery run`` as a user starts it: a subprocess with its own Ray cluster and var
directory, its log in a file, stopped by a signal. The e2e loop test and the process chaos
tests drive the same one."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import psutil

from bench._common import free_port, free_port_pair
from tests.conftest import MODELS_DIR, REPO

__all__ = ["RunProcess", "cmdline"]


def cmdline(p: psutil.Process) -> str:
    """Its command line; "" once it has exited (or is a zombie)."""
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return ""
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


class RunProcess:
    """``env``: settings for this stack alone (``DISTILLERY_*``); a None value removes a
    variable the test session set (``DISTILLERY_STUDENT__KIND``: the product's default)."""

    def __init__(
        self,
        var: Path,
        env: Mapping[str, str | None] | None = None,
        *,
        args: Sequence[str] = (),
        cwd: Path = REPO,
    ) -> None:
        """``args``: before ``run`` (``--preset smollm2``); ``cwd``: where relative paths
        (a preset's ``var/<preset>``) resolve."""
        self.var = var
        self.cwd = cwd
        self.port = free_port()
        self.metrics_port = free_port_pair(avoid={self.port})
        taken = {self.port, self.metrics_port, self.metrics_port + 1}
        haproxy_metrics = free_port(avoid=taken)
        haproxy_stats = free_port(avoid=taken | {haproxy_metrics})
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = var / "run.log"
        self.env = {
            **os.environ,
            "DISTILLERY_VAR_DIR": str(var),
            "DISTILLERY_MODELS_DIR": str(MODELS_DIR),
            "DISTILLERY_SERVER__PORT": str(self.port),
            # HAProxy's own ports too: another stack on this host (the test session's) holds
            # the defaults, and HAProxy then exits at start ("cannot bind socket").
            "DISTILLERY_SERVER__HAPROXY_METRICS_PORT": str(haproxy_metrics),
            "DISTILLERY_SERVER__HAPROXY_STATS_PORT": str(haproxy_stats),
        }
        self.env.pop("RAY_ADDRESS", None)  # its own cluster, not the test session's
        for key, value in (env or {}).items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value
        self.args = list(args)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distillery.cli", *self.args, "run", "--port", str(self.port)]
            + ["--metrics-port", str(self.metrics_port)],
            cwd=cwd,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals reach only this process, as kill would send them
        )

    def cli(self, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Another ``distillery`` command against this stack (same settings and var dir)."""
        return subprocess.run(
            [sys.executable, "-m", "distillery.cli", *self.args, *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def descendants(self) -> list[psutil.Process]:
        try:
            return list(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def brokers(self) -> list[psutil.Process]:
        """Running Tansu processes under this stack (a killed one is a zombie until reaped)."""
        return [p for p in self.descendants() if "tansu" in cmdline(p)]

    def stored(self) -> set[str]:
        db = self.var / "feedback.db"
        if not db.is_file():
            return set()
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = con.execute("SELECT request_id FROM feedback_events WHERE kind = 'escalation'").fetchall()
        except sqlite3.OperationalError:
            return set()
        finally:
            con.close()
        return {r[0] for r in rows}

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self, timeout_s: float = 120.0) -> tuple[int, list[psutil.Process]]:
        """SIGTERM, as Ctrl-C or ``kill`` would; the exit code, and the processes it had
        started that are still running 30 s later (none, when it stops as it should)."""
        children = self.descendants()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        deadline = time.monotonic() + 30
        left = children
        while time.monotonic() < deadline:
            left = [p for p in children if cmdline(p)]  # "" once gone or a zombie
            if not left:
                break
            time.sleep(0.5)
        return code, left

    def kill(self) -> None:
        """The fixture's last resort: SIGKILL the stack and everything it started."""
        if self.proc.poll() is None:
            for child in self.descendants():
                child.kill()
            self.proc.kill()
