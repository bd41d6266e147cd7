from router.pricing import PricingConfig, TierPrice


def test_student_only_request_pays_the_student() -> None:
    p = PricingConfig(
        student=TierPrice(input_per_mtok=1, output_per_mtok=2),
        teacher=TierPrice(input_per_mtok=10, output_per_mtok=20),
    )
    c = p.request_cost(1_000_000, 1_000_000, student_ran=True, teacher_ran=False)
    assert c.actual == 3.0
    assert c.teacher_equivalent == 30.0
    assert c.saved == 27.0


def test_escalated_request_pays_both_tiers() -> None:
    p = PricingConfig(
        student=TierPrice(input_per_mtok=1, output_per_mtok=2),
        teacher=TierPrice(input_per_mtok=10, output_per_mtok=20),
    )
    c = p.request_cost(
        1_000_000, 1_000_000, student_ran=True, teacher_ran=True, student_completion_tokens=500_000
    )
    assert c.actual == 1 + 1 + 30
    assert c.saved == -2.0
