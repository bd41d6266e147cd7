"""``distillery run`` as a user runs it: a subprocess with its own Ray cluster, the
embedded broker, consumer and loop, stopped by a signal.

In order, on one process:
1. at boot the student's engine starts once (the registry's version, not the configured
   directory and then the registry's copy of the same weights);
2. the embedded broker is SIGKILLed under load: the supervisor restarts it, the spool
   replays into it, and, without a restart of the stack, every escalation answered is a
   row in the store;
3. SIGTERM: the process exits 0 and no process it started is left alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import MODELS_DIR, REPO, free_port, wait_until
from tests.run_process import RunProcess, cmdline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = ["shift: abc =", "double: xyz =", "shift: xyz =", "reverse: hello ="]


def _wait(cond: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> bool:
    return wait_until(cond, timeout_s, every_s)


@pytest.fixture(scope="module")
def run_process(demo_models, tmp_path_factory) -> Iterator[RunProcess]:
    proc = RunProcess(
        tmp_path_factory.mktemp("runvar"),
        {
            "DISTILLERY_STUDENT__KIND": "transformers",
            "DISTILLERY_FEEDBACK__SAMPLE_RATE": "0",
            "DISTILLERY_FEEDBACK__KAFKA__REQUEST_TIMEOUT_MS": "1500",
            "DISTILLERY_FEEDBACK__KAFKA__MAX_BLOCK_MS": "1000",
            "DISTILLERY_FEEDBACK__KAFKA__DELIVERY_TIMEOUT_MS": "3000",
        },
    )
    try:
        assert _wait(proc.healthy, 240), "distillery run did not become healthy:\n" + proc.tail()
        yield proc
    finally:
        proc.kill()


class Load:
    """Escalating traffic from a thread; records the ids of escalated answers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.escalated: list[str] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                prompt = PROMPTS[i % len(PROMPTS)]
                i += 1
                try:
                    r = client.post(
                        f"{self.url}/v1/completions",
                        json={"model": "distillery", "prompt": prompt, "max_tokens": 8},
                    )
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))
                    continue
                if r.status_code != 200:
                    self.failed.append(f"{r.status_code} {r.text[:200]}")
                elif r.headers.get("x-distillery-tier") == "teacher":
                    self.escalated.append(f"{r.json()['id']}-0")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_the_students_engine_starts_once_at_boot(run_process):
    health = httpx.get(f"{run_process.url}/healthz", timeout=10).json()
    assert health["student_engine_starts"] == 1, health
    # serving the registry's version (ensure_registry made the demo student its first one)
    assert health["student"].startswith("student-")


def test_a_killed_broker_is_restarted_and_every_escalation_answered_is_stored(run_process):
    (old,) = run_process.brokers()
    log_from = run_process.log.stat().st_size  # this kill's lines (the test is run 20x in a row)
    with Load(run_process.url) as load:
        assert _wait(lambda: len(load.escalated) >= 10, 60), load.failed[:3]
        old.kill()  # SIGKILL, as a crash would
        killed_at = len(load.escalated)
        # The supervisor brings it back on the same port, without a restart of the stack
        # (after 1 s; kills in a row within a minute back off up to 30 s: --repeat).
        assert _wait(lambda: [p.pid for p in run_process.brokers()] not in ([], [old.pid]), 60), (
            run_process.tail()
        )
        assert _wait(lambda: len(load.escalated) >= killed_at + 20, 90), load.failed[:3]
    assert not load.failed, load.failed[:5]
    answered = set(load.escalated)
    assert _wait(lambda: answered <= run_process.stored(), 120), (
        f"{len(answered - run_process.stored())} of {len(answered)} escalations not stored\n"
        + run_process.tail()
    )
    print(
        f"\nbroker SIGKILLed under load: {len(answered)} escalations answered ({killed_at} before the"
        f" kill), {len(answered & run_process.stored())} stored, {len(load.failed)} failed requests"
    )
    log = run_process.log.read_bytes()[log_from:].decode(errors="replace")
    assert "embedded broker died" in log and "embedded broker restarted" in log
    assert log.count("embedded broker died") == 1  # said once, not on every reconnect


def test_sigterm_stops_everything_in_order_and_exits_zero(run_process):
    children = run_process.descendants()
    assert children, "run has no child processes?"
    run_process.proc.send_signal(signal.SIGTERM)
    try:
        code = run_process.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            "distillery run did not exit within 120 s of SIGTERM:\n" + run_process.tail()
        ) from None
    assert code == 0, run_process.tail()
    print(f"\nSIGTERM: exit {code}, {len(children)} child processes before, none left")
    assert _wait(
        lambda: not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 30
    ), [(p.pid, p.name()) for p in children if p.is_running()]
    log = run_process.log.read_text(errors="replace")
    assert "SIGTERM: finishing the requests in flight" in log and "stopped" in log
    assert "Aborted" not in log


def _brokers_on_host() -> set[int]:
    return {p.pid for p in psutil.process_iter() if "tansu" in cmdline(p)}


def test_a_start_that_fails_part_way_says_why_and_leaves_no_broker_behind(tmp_path: Path) -> None:
    """The consumer's metrics port is taken: the embedded broker is already up by then."""
    import socket

    before = _brokers_on_host()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DISTILLERY_VAR_DIR": str(tmp_path), "DISTILLERY_MODELS_DIR": str(MODELS_DIR)}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "distillery.cli",
                "run",
                "--port",
                str(free_port()),
                "--metrics-port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert f"metrics port {port} is not free" in out
    assert "Traceback" not in out
    assert "embedded Kafka-protocol broker" in out  # it had started, and was stopped
    assert _wait(lambda: not (_brokers_on_host() - before), 10), "the embedded broker was left running"
