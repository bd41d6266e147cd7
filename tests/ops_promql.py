"""Helpers for the ops tests: the PromQL in the dashboard and the rules, and what the
running processes really export (parsed from their Prometheus text exposition)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "distillery-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "distillery-rules.yml"
PROM_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Grafana's built-in variables, as a query would see them on a 1 s scrape interval.
GRAFANA_VARS = {"$__rate_interval": "30s", "$__range": "5m", "$__interval": "5s"}

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and annotation query."""
    out: list[tuple[str, str]] = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", target["expr"]))
    for ann in dashboard()["annotations"]["list"]:
        if "expr" in ann:
            out.append((f"annotation {ann['name']!r}", ann["expr"]))
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_exprs() -> list[tuple[str, str]]:
    return [(f"rule {r.get('alert') or r.get('record')!r}", r["expr"]) for r in rules()]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, as Prometheus receives it."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names matched) of every vector selector in ``expr``.

    A small tokenizer rather than a parser: strings, label matchers, ranges and the
    label lists of by/without/on/ignoring/group_* are cut out first; what remains that is
    an identifier, not a keyword, not a number and not a function call is a metric name.
    """
    e = to_promql(expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)
    # name{label="..."} -> remember label names per name
    matchers: dict[int, set[str]] = {}

    def cut_braces(m: re.Match[str]) -> str:
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(0)))
        matchers[len(matchers)] = labels
        return f" __SEL{len(matchers) - 1}__ "

    e = re.sub(r"\{[^}]*\}", cut_braces, e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    tokens = re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*__SEL(\d+)__)?(\s*\()?", e)
    for tok in tokens:
        name, _, sel, call = tok.groups()
        if call or name in _KEYWORDS or name.startswith("__SEL"):
            continue
        yield name, matchers.get(int(sel), set()) if sel else set()


def exposition(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from Prometheus text exposition as served.

    Families declared but without samples yet (a labelled metric never incremented)
    count too, under the names their samples will have."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names = {
                "histogram": [f"{name}_bucket", f"{name}_sum", f"{name}_count"],
                "summary": [name, f"{name}_sum", f"{name}_count"],
            }.get(kind, [name])
            for n in names:
                out.setdefault(n, set())
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
            assert m, line
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
            out.setdefault(m.group(1), set()).update(labels)
    return out
