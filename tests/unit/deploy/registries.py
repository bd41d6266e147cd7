"""Shared fixtures of the deploy unit tests: a file registry with two versions, the current
one v1, and the gateway's answer counters for them as ``/metrics`` text."""

from __future__ import annotations

from pathlib import Path

from deploy import ModelRegistry


def registry_with_two(tmp_path: Path) -> ModelRegistry:
    """``tmp_path / "reg"`` holding v1 (current) and v2."""
    src = tmp_path / "m"
    src.mkdir()
    (src / "config.json").write_text("{}")
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(src, "v1", {})
    reg.register(src, "v2", {})
    reg.promote("v1")
    return reg


def answer_metrics(v1: tuple[int, int], v2: tuple[int, int]) -> str:
    """``distillery_student_answers_total`` for v1 and v2 as (served, escalated)."""
    lines = ["# TYPE distillery_student_answers_total counter"]
    for version, (ok, esc) in (("v1", v1), ("v2", v2)):
        lines.append(f'distillery_student_answers_total{{escalated="false",model_version="{version}"}} {ok}')
        lines.append(f'distillery_student_answers_total{{escalated="true",model_version="{version}"}} {esc}')
    return "\n".join(lines) + "\n"
