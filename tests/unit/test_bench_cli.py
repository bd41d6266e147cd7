"""``python -m bench``: a name it does not know is refused before anything runs or the
report is rewritten; every listed benchmark has a measuring and a rendering module."""

from __future__ import annotations

import importlib

import pytest

import bench.__main__ as bench_main


def test_an_unknown_name_is_refused_before_the_report_is_touched(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("untouched")
    monkeypatch.setattr(bench_main, "DOC", doc)
    ran: list[str] = []
    monkeypatch.setattr(importlib, "import_module", lambda name: ran.append(name))
    with pytest.raises(SystemExit) as exit_:
        bench_main.main(["--only", "feedback"])
    assert exit_.value.code == 2
    assert "unknown benchmark feedback" in capsys.readouterr().err
    assert doc.read_text() == "untouched" and ran == []


@pytest.mark.parametrize("name", bench_main.BENCHMARKS)
def test_each_benchmark_measures_in_one_module_and_renders_in_another(name):
    measure = importlib.import_module(f"bench.{name}")
    report = importlib.import_module(f"bench.report.{name}")
    assert callable(measure.run) and not hasattr(measure, "render")
    assert callable(report.render) and not hasattr(report, "run")
