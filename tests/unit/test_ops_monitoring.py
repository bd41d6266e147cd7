"""The Prometheus rules and the Grafana dashboard as files: promtool accepts them, the alerts
fire on synthetic series (promtool test rules), every alert has a runbook section, and the
dashboard covers what operators watch. Whether the metric names exist is checked against
the running processes in tests/integration/test_ops_prometheus.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ops_promql import (
    DASHBOARD,
    PROM_CONFIG,
    RULES,
    dashboard,
    dashboard_exprs,
    rule_exprs,
    rules,
    selectors,
)

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "operations.md"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus package as root)")
    return found


def _run(*args: str) -> str:
    proc = subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_promtool_accepts_rules_and_scrape_config() -> None:
    out = _run("check", "rules", str(RULES))
    assert f"SUCCESS: {len(rules())} rules found" in out
    _run("check", "config", str(PROM_CONFIG))


def test_alerts_fire_when_they_should_and_not_otherwise() -> None:
    """deploy/prometheus/distillery-rules.test.yml: spike vs steady escalations, teacher
    errors, rollback, drift, spool growing then draining, consumer lag, stale refresh."""
    out = _run("test", "rules", "distillery-rules.test.yml")
    assert "SUCCESS" in out


def test_the_issues_alerts_exist_each_with_severity_and_a_runbook_section() -> None:
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    required = {
        "DistilleryEscalationRateSpike",
        "DistillerySpoolGrowing",
        "DistilleryConsumerLag",
        "DistilleryTeacherErrors",
        "DistilleryRollback",
        "DistilleryDriftDetected",
        "DistilleryNoSuccessfulRefresh",
        "DistilleryLiveAgreementBelowGate",
    }
    assert required <= set(alerts)
    assert "36 * 3600" in alerts["DistilleryNoSuccessfulRefresh"]["expr"]
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("#")
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        doc, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert doc == "docs/operations.md" and anchor in headings, f"{name}: no runbook section #{anchor}"
        assert name in RUNBOOK.read_text()


def test_promql_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, tier) (rate(distillery_x_bucket{job="a", tier!="none"}'
        "[$__rate_interval]))) / on() group_left sum(distillery:rec:ratio offset 5m) > bool 2e3"
        ' and time() - max(distillery_ts{job=~"b|c"}) > 36 * 3600'
    )
    assert sorted((n, sorted(labels)) for n, labels in selectors(expr)) == [
        ("distillery:rec:ratio", []),
        ("distillery_ts", ["job"]),
        ("distillery_x_bucket", ["job", "tier"]),
    ]


def test_dashboard_covers_what_operators_watch() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] == "Distillery"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for p in panels:  # every query goes to the chosen Prometheus
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
    names = {n for _, e in dashboard_exprs() for n, _ in selectors(e)}
    texts = " ".join(e for _, e in dashboard_exprs())
    wanted = {
        "traffic by tier": "distillery_requests_total",
        "escalations": "distillery_escalations_total",
        "confidence distribution": "distillery_confidence_bucket",
        "latency by tier": "distillery_request_latency_seconds_bucket",
        "cost": "distillery_teacher_equivalent_cost_total",
        "spool depth": "distillery_feedback_spool_depth",
        "consumer lag": "distillery_feedback_consumer_lag",
        "drift": "distillery_drift_share",
        "serving version": "distillery_model_version_info",
        "canary share": "distillery_student_answers_total",
        "live agreement": "distillery_audits_total",
        "gate agreement": "distillery_gate_agreement",
        "audit drops": "distillery_audits_dropped_total",
        "audit cost": "distillery_audit_cost_total",
        "ratings": "distillery_feedback_ratings_total",
        "time to first token": "distillery_stream_time_to_first_token_seconds_bucket",
        "inter-token latency": "distillery_stream_inter_token_latency_seconds_bucket",
        "time to decision": "distillery_stream_time_to_decision_seconds_bucket",
        "late doubts": "distillery_late_doubts_total",
    }
    for what, metric in wanted.items():
        assert metric in names, f"no panel for {what}"
    assert "histogram_quantile(0.5," in texts and "histogram_quantile(0.99," in texts
    annotations = {a["name"]: a["expr"] for a in dash["annotations"]["list"] if "expr" in a}
    assert 'result="promoted"' in annotations["Promotions"]
    assert 'result="rolled_back"' in annotations["Rollbacks"]
    assert "distillery_refreshes_total" in annotations["Retrains"]
    # the escalation-rate panel and the recording rule are the same expression
    rec = {r["record"]: r["expr"] for r in rules() if "record" in r}
    flat = "".join(rec["distillery:escalation_rate:ratio_rate5m"].split())
    panel = next(p for p in panels if p["title"] == "Escalation rate")
    assert "".join(panel["targets"][0]["expr"].split()).replace("$__rate_interval", "5m") == flat


def test_every_expression_names_a_metric() -> None:
    for where, expr in dashboard_exprs() + rule_exprs():
        assert list(selectors(expr)), f"{where}: no metric in {expr}"
    assert DASHBOARD.is_file()
