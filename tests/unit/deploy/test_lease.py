"""One refresh at a time per registry, and a crashed holder's lease does not block forever."""

import json
import os

import pytest

from deploy import LEASE_FILE, FileControlStore, RefreshInProgress, RefreshLease


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_second_refresh_is_refused_while_one_holds_the_lease_and_says_who(tmp_path):
    clock = Clock()
    first = RefreshLease(FileControlStore(tmp_path), holder="stack loop", ttl_s=60, clock=clock)
    second = RefreshLease(FileControlStore(tmp_path), holder="distillery retrain", ttl_s=60, clock=clock)
    first.acquire()
    try:
        with pytest.raises(RefreshInProgress, match=f"stack loop \\(pid {os.getpid()}"):
            second.acquire()
    finally:
        first.release()
    second.acquire()  # free again
    second.release()
    assert not (tmp_path / LEASE_FILE).exists()


def test_the_lease_of_a_holder_that_died_expires_and_is_taken_over(tmp_path):
    clock = Clock()
    (tmp_path / LEASE_FILE).write_text(
        json.dumps({"holder": "killed trainer", "token": "dead", "host": "elsewhere", "heartbeat": 900.0})
    )
    lease = RefreshLease(FileControlStore(tmp_path), holder="stack loop", ttl_s=60, clock=clock)
    lease.acquire()  # 100 s old heartbeat, 60 s ttl: expired
    assert (lease.current() or {})["holder"] == "stack loop"
    lease.release()


def test_a_live_lease_is_renewed_and_released_only_by_its_holder(tmp_path):
    clock = Clock()
    lease = RefreshLease(FileControlStore(tmp_path), holder="a", ttl_s=60, clock=clock)
    lease.acquire()
    clock.now += 50
    lease.renew()
    assert (lease.current() or {})["heartbeat"] == 1050.0
    clock.now += 50  # 100 s after start, 50 s after the renewal: still live
    with pytest.raises(RefreshInProgress):
        RefreshLease(FileControlStore(tmp_path), holder="b", ttl_s=60, clock=clock).acquire()
    other = RefreshLease(FileControlStore(tmp_path), holder="b", ttl_s=60, clock=clock)
    other.release()  # not its lease: nothing happens
    assert lease.current() is not None
    lease.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    clock = Clock()
    (tmp_path / LEASE_FILE).write_text(
        json.dumps(
            {
                "holder": "sigkilled retrain",
                "token": "t",
                "host": socket.gethostname(),
                "pid": dead.pid,
                "heartbeat": 999.0,
            }
        )
    )
    lease = RefreshLease(FileControlStore(tmp_path), holder="rerun", ttl_s=120, clock=clock)
    lease.acquire()  # heartbeat 1 s old, but its process is gone
    assert (lease.current() or {})["holder"] == "rerun"
    lease.release()
