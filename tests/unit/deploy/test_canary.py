from deploy import CanaryConfig, VersionStats, judge_canary, parse_version_stats

TEXT = """# HELP distillery_student_answers_total x
# TYPE distillery_student_answers_total counter
distillery_student_answers_total{escalated="false",model_version="v1"} 90.0
distillery_student_answers_total{escalated="true",model_version="v1"} 10.0
distillery_student_answers_total{escalated="true",model_version="v2"} 30.0
distillery_student_answers_total{escalated="false",model_version="v2"} 10.0
"""


def test_parse_and_delta():
    stats = parse_version_stats(TEXT)
    assert stats["v1"] == VersionStats(100, 10) and stats["v2"] == VersionStats(40, 30)
    assert stats["v2"].minus(VersionStats(20, 20)) == VersionStats(20, 10)
    assert stats["v1"].escalation_rate == 0.1


def test_verdicts():
    cfg = CanaryConfig(min_requests=20, max_escalation_increase=0.05)
    current = VersionStats(100, 10)
    assert judge_canary(current, VersionStats(10, 0), cfg) == "wait"
    assert judge_canary(current, VersionStats(40, 30), cfg) == "rollback"
    assert judge_canary(current, VersionStats(40, 5), cfg) == "promote"
    assert judge_canary(current, VersionStats(40, 6), cfg) == "promote"  # within tolerance


def _scripted(registry_path, snapshots):
    from deploy import CanaryController, ModelRegistry

    reg = ModelRegistry(registry_path)
    texts = iter(snapshots)
    return reg, CanaryController(
        reg, lambda: next(texts), CanaryConfig(min_requests=20, timeout_s=100), sleep=lambda s: None
    )


def _metrics(v1, v2):
    lines = []
    for version, (ok, esc) in (("v1", v1), ("v2", v2)):
        lines.append(f'distillery_student_answers_total{{escalated="false",model_version="{version}"}} {ok}')
        lines.append(f'distillery_student_answers_total{{escalated="true",model_version="{version}"}} {esc}')
    return "# TYPE distillery_student_answers_total counter\n" + "\n".join(lines) + "\n"


def _registry_with_two(tmp_path):
    from deploy import ModelRegistry

    src = tmp_path / "m"
    src.mkdir()
    (src / "config.json").write_text("{}")
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(src, "v1", {})
    reg.register(src, "v2", {})
    reg.promote("v1")


def test_controller_rolls_back_a_canary_that_escalates_more(tmp_path):
    _registry_with_two(tmp_path)
    reg, ctl = _scripted(
        tmp_path / "reg", [_metrics((0, 0), (0, 0)), _metrics((50, 5), (5, 5)), _metrics((90, 10), (5, 25))]
    )
    verdict, _, can = ctl.run("v2")
    assert verdict == "rollback" and can.escalation_rate > 0.8
    assert reg.pointers()["current"] == "v1" and reg.canary() == (None, 0.0)
    assert [e["action"] for e in reg.audit()][-2:] == ["canary", "canary_end"]
    assert "automatic rollback" in reg.audit()[-1]["reason"]


def test_controller_promotes_a_healthy_canary(tmp_path):
    _registry_with_two(tmp_path)
    reg, ctl = _scripted(tmp_path / "reg", [_metrics((0, 0), (0, 0)), _metrics((90, 10), (27, 3))])
    verdict, _, _ = ctl.run("v2")
    assert verdict == "promote"
    assert reg.pointers() == {"current": "v2", "previous": "v1"}
    assert reg.canary() == (None, 0.0)
