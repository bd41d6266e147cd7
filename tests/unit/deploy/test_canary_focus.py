"""The canary judged where its refresh was meant to help: the focus routes."""

from deploy import (
    CanaryConfig,
    RouteSplit,
    VersionStats,
    failing_routes,
    focus_routes,
    judge_focus,
    parse_live_metrics,
)

CFG = CanaryConfig(min_requests=30, min_focus_requests=30, min_focus_improvement=0.3, focus_min_rate=0.2)


def _text(rows: list[tuple[str, str, str, float]]) -> str:
    lines = ["# HELP distillery_student_answers_total x", "# TYPE distillery_student_answers_total counter"]
    for version, escalated, route, value in rows:
        lines.append(
            f'distillery_student_answers_total{{escalated="{escalated}",model_version="{version}",'
            f'route="{route}"}} {value}'
        )
    return "\n".join(lines) + "\n"


def _split(focus_cur: tuple[int, int], focus_can: tuple[int, int], rest_cur=(100, 10), rest_can=(40, 4)):
    return RouteSplit(
        VersionStats(*focus_cur), VersionStats(*focus_can), VersionStats(*rest_cur), VersionStats(*rest_can)
    )


def test_counts_per_route_since_the_canary_started():
    base = parse_live_metrics(_text([("v1", "true", "plural", 50), ("v1", "false", "orders", 100)]))
    live = parse_live_metrics(
        _text(
            [
                ("v1", "true", "plural", 80),
                ("v1", "false", "orders", 130),
                ("v1", "true", "orders", 5),
                ("v2", "false", "plural", 25),
                ("v2", "true", "plural", 5),
                ("v2", "false", "orders", 12),
            ]
        )
    )
    split = RouteSplit.of(live, base, "v1", "v2", ["plural"])
    assert split.current_focus == VersionStats(30, 30)
    assert split.canary_focus == VersionStats(30, 5)
    assert split.current_rest == VersionStats(35, 5)
    assert split.canary_rest == VersionStats(12, 0)
    assert live.stats("v2") == VersionStats(42, 5)  # the per-version totals still sum every route


def test_a_canary_that_escalates_a_little_less_overall_but_not_on_its_routes_is_not_promoted():
    # The case: 0.357 vs 0.362 overall; on the drifted routes 90% vs 95%.
    verdict, why = judge_focus(_split((200, 190), (100, 90)), CFG)
    assert verdict == "rollback" and "focus routes not clearly better" in why


def test_clearly_better_on_the_focus_routes_promotes():
    verdict, why = judge_focus(_split((60, 60), (40, 4)), CFG)
    assert verdict == "promote" and "clearly better" in why


def test_too_few_focus_answers_or_an_open_question_waits():
    assert judge_focus(_split((60, 60), (10, 0)), CFG)[0] == "wait"
    # 18 of 30 escalated: the interval [0.42, 0.75] straddles the bar (0.7 of the current's 1.0).
    assert judge_focus(_split((60, 60), (30, 18)), CFG)[0] == "wait"


def test_old_routes_clearly_worse_roll_back_even_when_the_focus_routes_improved():
    verdict, why = judge_focus(_split((60, 60), (40, 2), rest_cur=(200, 20), rest_can=(60, 30)), CFG)
    assert verdict == "rollback" and "other routes" in why
    # The smoke run's case: 5 of 56 old-route answers escalated where the current had 0.
    assert judge_focus(_split((60, 60), (40, 2), rest_cur=(511, 0), rest_can=(56, 5)), CFG)[0] == "rollback"
    # A few more escalations on the old routes, within noise, do not.
    assert judge_focus(_split((60, 60), (40, 2), rest_cur=(200, 20), rest_can=(60, 9)), CFG)[0] == "promote"
    # Clearly worse but inside the 5-point promise does not either: the demo's e2e loop,
    # 3 of 132 old-route answers against the current's 0 of 307 (drifted routes 99% -> 12%).
    inside = _split((322, 318), (115, 14), rest_cur=(307, 0), rest_can=(132, 3))
    assert judge_focus(inside, CFG)[0] == "promote"


def test_nothing_to_improve_on_the_focus_routes_falls_back_to_not_worse():
    assert judge_focus(_split((100, 5), (40, 3)), CFG)[0] == "promote"


def test_focus_routes_are_those_with_a_real_share_of_the_new_examples():
    new = {"plural": 80, "opposite": 70, "orders": 8, "refunds": 6, "": 3}
    assert focus_routes(new, CanaryConfig(focus_min_share=0.1)) == ["opposite", "plural"]
    assert focus_routes({}, CanaryConfig()) == []


def test_an_old_route_with_a_share_of_the_new_examples_is_not_a_focus_route():
    # Seed 1 on the real pair: capital escalated 101 of 625 (16%) and held >= 10% of the
    # deduplicated new examples; plural escalated 654 of 654.
    live = parse_live_metrics(
        _text(
            [
                ("v1", "true", "capital", 101),
                ("v1", "false", "capital", 524),
                ("v1", "true", "plural", 654),
            ]
        )
    )
    routes = ["capital", "plural", "opposite"]  # opposite: no answers of v1 yet, kept
    assert failing_routes(live, "v1", routes, CanaryConfig()) == ["opposite", "plural"]
