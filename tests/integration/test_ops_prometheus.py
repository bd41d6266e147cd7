"""Monitoring against the real thing: the live gateway (``live_stack``), a real
``distillery feedback consume`` and ``distillery loop`` process serving their metrics, and
a real Prometheus (Debian's package) scraping all three with deploy/prometheus's job
names and rules.

* Every metric the dashboard and the rules name is exported by one of the running
  processes (names collected from their ``/metrics``, not from a list), with the labels
  the expressions match on.
* Prometheus evaluates every dashboard query and every rule without an error.
* After known traffic, the dashboard's escalation-rate query over Prometheus' HTTP API
  returns exactly the share the gateway's own counters show, and so does the cost ratio.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from distillery._stack import LocalStack
from tests.conftest import free_port
from tests.ops_promql import (
    PROM_CONFIG,
    RULES,
    dashboard,
    dashboard_exprs,
    exposition,
    recorded_names,
    rule_exprs,
    selectors,
    to_promql,
)

pytestmark = pytest.mark.integration

DISTILLERY = str(Path(sys.executable).parent / "distillery")
STUDENT_PROMPTS = ["reverse: hello =", "upper: world =", "reverse: cab =", "upper: abc =", "reverse: dog ="]
# "shift: hello =" is answered "hol" at 0.9966, above the 0.9965 calibrated threshold: a
# confidently wrong answer of the demo student, so not a prompt that must escalate.
TEACHER_PROMPTS = ["shift: abc =", "double: xyz =", "shift: xyz ="]
# Prometheus' own series, and the labels it adds to every scraped one.
PROMETHEUS_NAMES = {"up"}
TARGET_LABELS = {"job", "instance"}


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            resp = httpx.get(url, timeout=2)
            if resp.status_code == 200:
                return resp.text
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f}s")


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


class Monitoring:
    def __init__(self, gateway: str, consumer: str, loop: str, prometheus: str) -> None:
        self.targets = {
            "distillery-gateway": gateway,
            "distillery-feedback-consumer": consumer,
            "distillery-loop": loop,
        }
        self.prometheus = prometheus

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        body = httpx.get(f"{self.prometheus}/api/v1/query", params=params, timeout=10).json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, want: float, timeout_s: float = 30) -> float:
        """Waits until Prometheus has scraped ``expr`` at ``want``; returns the time seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result and abs(float(result[0]["value"][1]) - want) < 1e-9:
                return time.time()
            time.sleep(0.3)
        raise AssertionError(f"Prometheus never saw {expr} == {want}: {self.query(expr)}")


def _prometheus_config(targets: dict[str, str], tmp: Path) -> Path:
    """deploy/prometheus/prometheus.yml with its job names, paths and the real rule file,
    the targets pointed at this test's loopback ports, and a 1 s cadence."""
    doc = yaml.safe_load(PROM_CONFIG.read_text())
    doc["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    doc["rule_files"] = [str(RULES)]
    for job in doc["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": [targets.pop(job["job_name"])]}]
    assert not targets, f"jobs missing from prometheus.yml: {targets}"
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def monitoring(live_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitoring]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed (make test installs Debian's prometheus package as root)")
    tmp = tmp_path_factory.mktemp("ops")
    settings: Any = live_stack.settings
    procs = Processes()
    try:
        c_port = free_port()
        l_port = free_port(avoid={c_port})
        p_port = free_port(avoid={c_port, l_port})
        common = {
            "DISTILLERY_SERVER__HOST": "127.0.0.1",
            "DISTILLERY_MODELS_DIR": str(settings.resolved_models_dir),
        }
        # The consumer in its own group and store, so the session's consumer is undisturbed.
        consumer = procs.start(
            [DISTILLERY, "feedback", "consume", "--metrics-port", str(c_port)],
            {
                **common,
                "DISTILLERY_VAR_DIR": str(tmp / "consumer"),
                "DISTILLERY_FEEDBACK__KAFKA__BOOTSTRAP": settings.feedback.kafka.bootstrap,
                "DISTILLERY_FEEDBACK__KAFKA__CONSUMER_GROUP": "ops-test",
                "DISTILLERY_FEEDBACK__STORE_DSN": str(tmp / "consumer.db"),
            },
            tmp / "consumer.log",
        )
        loop = procs.start(
            [
                DISTILLERY,
                "loop",
                "--metrics-port",
                str(l_port),
                "--interval",
                "3600",
                "--gateway-url",
                live_stack.url,
            ],
            {
                **common,
                "DISTILLERY_VAR_DIR": str(tmp / "loop"),
                "DISTILLERY_FEEDBACK__STORE_DSN": str(tmp / "loop.db"),
            },
            tmp / "loop.log",
        )
        config = _prometheus_config(
            {
                "distillery-gateway": live_stack.url.removeprefix("http://"),
                "distillery-feedback-consumer": f"127.0.0.1:{c_port}",
                "distillery-loop": f"127.0.0.1:{l_port}",
            },
            tmp,
        )
        procs.start(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{p_port}",
                "--web.enable-lifecycle",
            ],
            {},
            tmp / "prometheus.log",
        )
        _wait_http(f"http://127.0.0.1:{c_port}/metrics", 60, consumer)
        _wait_http(f"http://127.0.0.1:{l_port}/metrics", 120, loop)
        _wait_http(f"http://127.0.0.1:{p_port}/-/ready", 30)
        mon = Monitoring(
            f"{live_stack.url}/metrics",
            f"http://127.0.0.1:{c_port}/metrics",
            f"http://127.0.0.1:{l_port}/metrics",
            f"http://127.0.0.1:{p_port}",
        )
        for job in mon.targets:
            mon.wait_for(f'up{{job="{job}"}}', 1.0)
        # Traffic of both kinds first: labelled series exist only once used.
        for _ in range(2):
            _complete(live_stack.url, STUDENT_PROMPTS[0])
            _complete(live_stack.url, TEACHER_PROMPTS[0])
        yield mon
    finally:
        procs.stop()


def _complete(url: str, prompt: str) -> httpx.Response:
    resp = httpx.post(
        f"{url}/v1/completions", json={"model": "distillery", "prompt": prompt, "max_tokens": 16}, timeout=60
    )
    assert resp.status_code == 200, resp.text
    return resp


def _gateway_counts(url: str) -> dict[str, float]:
    totals = {"requests": 0.0, "escalations": 0.0, "cost": 0.0, "teacher_only": 0.0}
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == "distillery_requests_total" and s.labels["tier"] != "none":
                totals["requests"] += s.value
            elif s.name == "distillery_escalations_total":
                totals["escalations"] += s.value
            elif s.name == "distillery_cost_total":
                totals["cost"] += s.value
            elif s.name == "distillery_teacher_equivalent_cost_total":
                totals["teacher_only"] += s.value
    return totals


def test_every_metric_in_dashboard_and_rules_is_exported_by_a_running_process(monitoring: Monitoring) -> None:
    exported: dict[str, set[str]] = {}
    by_job: dict[str, set[str]] = {}
    for job, url in monitoring.targets.items():
        names = exposition(httpx.get(url, timeout=10).text)
        by_job[job] = set(names)
        for name, labels in names.items():
            exported.setdefault(name, set()).update(labels)
    assert all(n.startswith("distillery_") for n in exported), sorted(
        n for n in exported if not n.startswith("distillery_")
    )
    # each process really serves its own half
    assert "distillery_cost_total" in by_job["distillery-gateway"]
    assert "distillery_feedback_consumer_lag" in by_job["distillery-feedback-consumer"]
    assert "distillery_refresh_last_success_timestamp_seconds" in by_job["distillery-loop"]
    recorded = recorded_names()
    checked = 0
    for where, expr in dashboard_exprs() + rule_exprs():
        for name, labels in selectors(expr):
            checked += 1
            if name in recorded or name in PROMETHEUS_NAMES:
                continue
            assert name in exported, f"{where}: {name} is not exported by the gateway, consumer or loop"
            unknown = labels - exported[name] - TARGET_LABELS
            assert not unknown, f"{where}: {name} has no label(s) {sorted(unknown)}"
        # a job matcher must point at the process that really exports the series
        for name, job in re.findall(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\{[^}]*\bjob="([^"]+)"', expr):
            assert name in by_job[job], f"{where}: {name} is not exported by {job}"
    assert checked > 50


def test_every_exported_metric_is_in_the_operations_catalog(monitoring: Monitoring) -> None:
    catalog = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    families = {
        line.split()[2]
        for url in monitoring.targets.values()
        for line in httpx.get(url, timeout=10).text.splitlines()
        if line.startswith("# TYPE ") and not line.split()[2].endswith("_created")
    }
    assert len(families) > 30
    missing = sorted(f for f in families if f"`{f}`" not in catalog)
    assert not missing, f"exported but not in docs/operations.md: {missing}"


def test_prometheus_evaluates_every_query_and_rule_without_error(monitoring: Monitoring) -> None:
    for where, expr in dashboard_exprs():
        body = httpx.get(
            f"{monitoring.prometheus}/api/v1/query", params={"query": to_promql(expr)}, timeout=10
        )
        assert body.json()["status"] == "success", f"{where}: {body.text}"
    deadline = time.monotonic() + 30
    while True:  # every rule evaluated at least once (never-evaluated ones say year 0001)
        groups = httpx.get(f"{monitoring.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = bool(rules) and all(not r["lastEvaluation"].startswith("0001") for r in rules)
        if evaluated or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert evaluated
    assert len(rules) == len(rule_exprs())
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # the loop's series reach Prometheus under its job, every refresh result from the start
    assert monitoring.scalar('count(distillery_refreshes_total{job="distillery-loop"})') == 5
    assert (
        monitoring.scalar('max(distillery_refresh_last_success_timestamp_seconds{job="distillery-loop"})') > 0
    )


def test_escalation_rate_over_prometheus_http_api(monitoring: Monitoring, live_stack: LocalStack) -> None:
    url = live_stack.url
    # The fixture's warm-up made every series the ratio sums exist (and be past 0, so
    # Prometheus' start extrapolation treats them alike) before the measured window starts.
    before = _gateway_counts(url)
    monitoring.wait_for(
        'sum(distillery_requests_total{job="distillery-gateway", tier!="none"})', before["requests"]
    )
    time.sleep(2.5)  # two more scrapes at the baseline: the window can start anywhere in them
    window_start = time.time() - 1.0
    tiers = [_complete(url, p).headers["x-distillery-tier"] for p in STUDENT_PROMPTS + TEACHER_PROMPTS]
    after = _gateway_counts(url)
    end = monitoring.wait_for(
        'sum(distillery_requests_total{job="distillery-gateway", tier!="none"})', after["requests"]
    )
    requests = after["requests"] - before["requests"]
    escalations = after["escalations"] - before["escalations"]
    assert requests == len(tiers) == 8
    assert escalations == tiers.count("teacher") >= len(TEACHER_PROMPTS)  # the skills the student lacks
    assert tiers[: len(STUDENT_PROMPTS)].count("student") >= 4
    # The dashboard's escalation-rate panel (= the recording rule), over a window holding
    # exactly the measured traffic.
    panel = next(p for p in dashboard()["panels"] if p["title"] == "Escalation rate")
    window = f"{int(end - window_start) + 1}s"
    rate = monitoring.scalar(panel["targets"][0]["expr"].replace("$__rate_interval", window), at=end)
    assert rate == pytest.approx(escalations / requests, abs=0.02)
    assert 0.3 <= rate <= 0.7
    cost = next(p for p in dashboard()["panels"] if p["title"] == "Spend vs teacher-only")
    ratio = monitoring.scalar(cost["targets"][0]["expr"].replace("$__rate_interval", window), at=end)
    spent = after["cost"] - before["cost"]
    teacher_only = after["teacher_only"] - before["teacher_only"]
    assert ratio == pytest.approx(spent / teacher_only, rel=0.02)
    assert 0 < ratio < 1  # the cascade is cheaper than teacher-only on this mix
    print(f"escalation rate {rate:.4f} ({escalations:.0f}/{requests:.0f}); spend/teacher-only {ratio:.4f}")
    # the recording rule is live too: read an evaluation made after the traffic was scraped
    deadline = time.monotonic() + 15
    while monitoring.scalar("timestamp(distillery:escalation_rate:ratio_rate5m)") <= end:
        assert time.monotonic() < deadline, "the recording rule is not being evaluated"
        time.sleep(0.3)
    assert 0 < monitoring.scalar("distillery:escalation_rate:ratio_rate5m") <= 1
