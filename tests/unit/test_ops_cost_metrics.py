"""Cost metrics: what each answered request cost per tier, and what teacher-only would have.

The cascade is the real ``CascadeRouter`` over in-memory tiers (pure logic); the counters
are read back from the metrics' own Prometheus exposition, as a scrape would see them.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics
from router import CascadeRouter, GenerationRequest, ThresholdPolicy
from router.config import CascadeConfig
from router.errors import TeacherUnavailable
from router.pricing import PricingConfig, TierPrice
from tests.fakes.clients import FakeTier, make_generation

PRICES = PricingConfig(
    student=TierPrice(input_per_mtok=1.0, output_per_mtok=2.0),
    teacher=TierPrice(input_per_mtok=10.0, output_per_mtok=30.0),
)
REQ = GenerationRequest(prompt="reverse: abc =", max_tokens=8)


def _samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _cost(metrics: GatewayMetrics) -> tuple[float, float, float]:
    s = _samples(metrics)
    return (
        s[("distillery_cost_total", (("tier", "student"),))],
        s[("distillery_cost_total", (("tier", "teacher"),))],
        s[("distillery_teacher_equivalent_cost_total", ())],
    )


def _route(
    student_prob: float, *, teacher_fails: bool = False, policy: Literal["error", "serve_student"] = "error"
) -> GatewayMetrics:
    # Student answers 3 tokens for a 5-token prompt; the teacher answers 4 tokens.
    student = FakeTier(lambda r: make_generation("cba", student_prob, model_id="student"))
    teacher = FakeTier(
        lambda r: make_generation("abcd", model_id="teacher"),
        fail=TeacherUnavailable("down") if teacher_fails else None,
    )
    router = CascadeRouter(
        student, teacher, ThresholdPolicy("mean_logprob", 0.9), CascadeConfig(teacher_failure_policy=policy)
    )
    metrics = GatewayMetrics(pricing=PRICES)
    result = asyncio.run(router.route(REQ))
    metrics.observe("completions", result, 0.01)
    return metrics


def test_cost_counters_exist_from_zero_before_any_request() -> None:
    assert _cost(GatewayMetrics(pricing=PRICES)) == (0.0, 0.0, 0.0)


def test_student_answer_costs_the_student_and_saves_the_teacher_price() -> None:
    student, teacher, equivalent = _cost(_route(0.999))
    assert student == pytest.approx((5 * 1.0 + 3 * 2.0) / 1e6)
    assert teacher == 0.0
    # teacher-only baseline: the same tokens at the teacher's prices
    assert equivalent == pytest.approx((5 * 10.0 + 3 * 30.0) / 1e6)
    want = PRICES.request_cost(5, 3, student_ran=True, teacher_ran=False)
    assert student + teacher == pytest.approx(want.actual)
    assert equivalent - (student + teacher) == pytest.approx(want.saved)


def test_escalated_answer_pays_both_tiers_and_saves_nothing() -> None:
    student, teacher, equivalent = _cost(_route(0.5))
    assert student == pytest.approx((5 * 1.0 + 3 * 2.0) / 1e6)  # the student's own answer
    assert teacher == pytest.approx((5 * 10.0 + 4 * 30.0) / 1e6)
    assert equivalent == pytest.approx(teacher)
    want = PRICES.request_cost(5, 4, student_ran=True, teacher_ran=True, student_completion_tokens=3)
    assert student + teacher == pytest.approx(want.actual)
    assert equivalent - (student + teacher) == pytest.approx(want.saved) and want.saved < 0


def test_teacher_down_with_serve_student_policy_bills_only_the_student() -> None:
    student, teacher, equivalent = _cost(_route(0.5, teacher_fails=True, policy="serve_student"))
    assert student == pytest.approx((5 * 1.0 + 3 * 2.0) / 1e6)
    assert teacher == 0.0
    assert equivalent == pytest.approx((5 * 10.0 + 3 * 30.0) / 1e6)


def test_costs_accumulate_and_default_pricing_is_used_without_one() -> None:
    metrics = GatewayMetrics()
    student = FakeTier(lambda r: make_generation("cba", 0.999))
    router = CascadeRouter(student, student, ThresholdPolicy("mean_logprob", 0.9), CascadeConfig())
    for _ in range(4):
        metrics.observe("completions", asyncio.run(router.route(REQ)), 0.01)
    s, t, eq = _cost(metrics)
    default = PricingConfig()
    assert s == pytest.approx(4 * default.student.cost(5, 3))
    assert eq == pytest.approx(4 * default.teacher.cost(5, 3))
    assert t == 0.0
