"""The cost model shared by the gateway's cost metrics, the scenario and the benchmarks.

Prices are per million tokens per tier, split into input (prompt) and output
(completion) like every hosted API's price list. A cascaded request always pays the
student; an escalated one pays the teacher too. The teacher-only baseline is what the same
request would have cost sent straight to the teacher (same token counts: the demo models
share a tokenizer; for a remote teacher this is the estimate ops want, not an invoice).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["PricingConfig", "RequestCost", "TierPrice"]


class TierPrice(BaseModel):
    """One tier's price, in ``currency`` per million tokens."""

    input_per_mtok: float = Field(ge=0.0)
    output_per_mtok: float = Field(ge=0.0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


class RequestCost(BaseModel):
    """What one request cost and what teacher-only would have cost."""

    actual: float
    teacher_equivalent: float

    @property
    def saved(self) -> float:
        return self.teacher_equivalent - self.actual


class PricingConfig(BaseModel):
    """Per-tier prices (defaults: the teacher costs 10x the student, a typical
    large/small ratio; set real prices from your provider's list).

    Parameters:
        currency (`str`, defaults to ``USD``): label only, for dashboards.
        student (`TierPrice`), teacher (`TierPrice`): per million tokens.
    """

    currency: str = "USD"
    student: TierPrice = TierPrice(input_per_mtok=0.10, output_per_mtok=0.10)
    teacher: TierPrice = TierPrice(input_per_mtok=1.00, output_per_mtok=1.00)

    def request_cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        student_ran: bool,
        teacher_ran: bool,
        student_completion_tokens: int | None = None,
    ) -> RequestCost:
        """``completion_tokens`` is the served answer's length; when the teacher answered
        after the student, pass the student's own length as ``student_completion_tokens``."""
        actual = 0.0
        if student_ran:
            s_out = completion_tokens if student_completion_tokens is None else student_completion_tokens
            actual += self.student.cost(prompt_tokens, s_out)
        if teacher_ran:
            actual += self.teacher.cost(prompt_tokens, completion_tokens)
        return RequestCost(
            actual=actual, teacher_equivalent=self.teacher.cost(prompt_tokens, completion_tokens)
        )
