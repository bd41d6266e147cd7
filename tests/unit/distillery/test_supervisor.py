"""The embedded stack's supervisor: a dead service restarts with backoff, said once."""

import logging

from distillery._local import Supervisor


class FakeService:
    def __init__(self, name: str, fail_starts: int = 0) -> None:
        self.name = name
        self.up = True
        self.starts = 0
        self.fail_starts = fail_starts

    def start(self) -> None:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise OSError("port still busy")
        self.up = True

    def alive(self) -> bool:
        return self.up

    def stop(self) -> None:
        self.up = False


def test_a_dead_service_is_restarted_after_its_backoff_and_logged_once(caplog, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("distillery._local.time.monotonic", lambda: clock[0])
    broker = FakeService("embedded broker", fail_starts=1)
    sup = Supervisor([broker])
    caplog.set_level(logging.WARNING, logger="distillery.stack")
    sup.check()
    assert broker.starts == 0
    broker.up = False
    for _ in range(5):  # many passes inside the first backoff: one line, no restart yet
        sup.check()
    assert broker.starts == 0
    assert sum("died" in r.message for r in caplog.records) == 1
    clock[0] += 1.0
    sup.check()  # first attempt fails: backoff doubles
    assert broker.starts == 1 and not broker.up
    clock[0] += 1.0
    sup.check()  # 1 s later: still inside the doubled backoff
    assert broker.starts == 1
    clock[0] += 1.5
    sup.check()
    assert broker.starts == 2 and broker.up
    assert sup.restarts() == {"embedded broker": 1}
    messages = [r.message for r in caplog.records]
    assert sum("died" in m for m in messages) == 1
    assert any("did not restart" in m for m in messages) and any("restarted after" in m for m in messages)


def test_healthy_services_are_left_alone():
    svc = FakeService("refresh loop")
    sup = Supervisor([svc])
    for _ in range(3):
        sup.check()
    assert svc.starts == 0


def test_sigterm_sigint_and_sighup_each_start_the_ordered_stop():
    import os
    import signal

    from distillery._local import ShutdownSignal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        for sig in before:
            stop = ShutdownSignal().install()
            os.kill(os.getpid(), sig)
            assert stop.wait(5) == sig.name
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_burst_of_signals_still_stops_once_and_never_hangs():
    """Signals delivered while the handler itself runs (a Ctrl-C forwarded by ``timeout``
    arrives twice at once) once deadlocked the handler on a lock its own thread held."""
    import os
    import signal

    from distillery._local import ShutdownSignal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        stop = ShutdownSignal().install()
        for _ in range(50):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5) == "SIGINT"  # the first names the stop
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_signal_while_the_stack_starts_waits_for_the_start_and_a_second_one_stops_waiting():
    """``/healthz`` answers before ``distillery run`` has finished starting; a SIGTERM then
    (a test, a supervisor, Ctrl-C) killed the process with Ray's handler, leaving the broker
    and the engines behind. Now the first one is honoured once the start is done; a second
    one interrupts a start that hangs."""
    import os
    import signal

    import pytest

    from distillery._local import ShutdownSignal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        stop = ShutdownSignal().install()
        stop.starting = True
        os.kill(os.getpid(), signal.SIGTERM)  # the start goes on
        assert stop.received == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(50):  # delivered between two bytecodes of this thread
                pass
        assert stop.wait(1) == "SIGTERM"
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
