"""The whole loop as a user runs it, on the shipped wiring: ``distillery run`` (the demo
preset's defaults: the vLLM student where installed, the embedded broker, consumer and
refresh loop that ``build_loop`` wires), then ``distillery demo scenario`` against it, which
sends the drift traffic and asks the running stack's own loop for the refresh.

Duration on 2 cores: ~5-6 minutes (the stack's start, 3,000 drift requests, the loop's TRL
run, gate and live canary). Marked slow; it runs in ``make test`` (CI) all the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until
from tests.run_process import RunProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait(cond: Callable[[], bool], timeout_s: float) -> bool:
    return wait_until(cond, timeout_s, 1.0)


@pytest.fixture(scope="module")
def shipped_stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunProcess]:
    # The product's defaults: the test session's transformers pin is lifted for this stack.
    proc = RunProcess(tmp_path_factory.mktemp("e2evar"), {"DISTILLERY_STUDENT__KIND": None})
    try:
        assert _wait(proc.healthy, 300), "distillery run did not become healthy:\n" + proc.tail()
        yield proc
    finally:
        proc.kill()


@pytest.mark.timeout(1800)
def test_traffic_drift_is_detected_distilled_gated_canaried_and_escalations_fall(
    shipped_stack: RunProcess, tmp_path: Path
) -> None:
    import importlib.util

    health = httpx.get(f"{shipped_stack.url}/healthz", timeout=10).json()
    initial = health["student"]
    if importlib.util.find_spec("vllm") is not None:  # make setup installs it: the default
        assert health["student_backend"] == "vllm", health
    plot = tmp_path / "scenario.png"
    started = time.monotonic()
    done = shipped_stack.cli("demo", "scenario", "--plot", str(plot), timeout_s=1500)
    print(f"\ne2e loop (distillery demo scenario on distillery run): {time.monotonic() - started:.0f}s")
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + shipped_stack.tail()
    report = json.loads(plot.with_suffix(".json").read_text())
    before, drift, after = (report["windows"][i] for i in (0, 1, -1))
    loop = report["loop"]
    # The stack's own loop answered the scenario's request; it saw the drift itself.
    assert all(e["drift"]["drifted"] for e in loop), loop
    # A first candidate may be refused by the gate (then more feedback, one more refresh);
    # a refused one must never have been served.
    assert all(e["result"] == "refused" for e in loop[:-1]), loop
    event = loop[-1]
    assert event["result"] == "promoted", loop
    # Every stage from drift detection to the swap is timed (benchmarks report them).
    assert {"drift_check", "dataset", "train", "gate", "register", "canary"} <= set(event["timings_s"])
    new_version = event["version"]
    assert new_version != initial
    assert httpx.get(f"{shipped_stack.url}/healthz", timeout=10).json()["student"] == new_version
    assert after["student_versions"] == [new_version]
    # Escalations on the drifted skills fall to less than half of what they were.
    assert drift["escalation_rate_new_skills"] > 0.9
    assert after["escalation_rate_new_skills"] < drift["escalation_rate_new_skills"] / 2
    # Old skills do not regress beyond 3 points; served answers stay right.
    assert after["accuracy_old_skills"] >= before["accuracy_old_skills"] - 0.03
    assert after["accuracy_new_skills"] >= 0.95
    assert after["cost_vs_teacher_only"] < drift["cost_vs_teacher_only"]
    assert plot.stat().st_size > 10_000
