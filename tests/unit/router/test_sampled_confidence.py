"""Sampled requests are scored on the top token's probability (the draw must not decide
the tier); greedy ones on the chosen token's, which is then the same number."""

import math

from router import CascadeConfig, CascadeRouter, GenerationRequest, ThresholdPolicy, confidence_logprobs
from tests.fakes.clients import FakeTier, make_generation


def sampled_answer(chosen: float, top: float):
    gen = make_generation("Paris")
    n = len(gen.token_logprobs)
    return gen.model_copy(
        update={"token_logprobs": [math.log(chosen)] * n, "top_logprobs": [math.log(top)] * n}
    )


def test_greedy_requests_use_the_chosen_tokens_probabilities():
    gen = sampled_answer(0.2, 0.9)
    assert confidence_logprobs(gen, sampled=False) == gen.token_logprobs


def test_sampled_requests_use_the_top_tokens_unless_configured_otherwise():
    gen = sampled_answer(0.2, 0.9)
    assert confidence_logprobs(gen, sampled=True) == gen.top_logprobs
    assert confidence_logprobs(gen, sampled=True, mode="sampled_token") == gen.token_logprobs


def test_a_backend_without_top_logprobs_falls_back_to_the_chosen_tokens():
    gen = make_generation("Paris")
    assert confidence_logprobs(gen, sampled=True) == gen.token_logprobs


def test_an_empty_answer_is_no_evidence():
    assert confidence_logprobs(make_generation(""), sampled=True) == []


async def test_a_sampled_answer_of_a_sure_model_is_not_escalated_for_its_unlucky_draw():
    student = FakeTier(lambda r: sampled_answer(0.3, 0.98))
    teacher = FakeTier(lambda r: make_generation("Paris"))
    router = CascadeRouter(student, teacher, ThresholdPolicy("mean_logprob", 0.9), CascadeConfig())
    result = await router.route(GenerationRequest(prompt="capital of France?", temperature=1.0))
    assert result.tier == "student" and teacher.calls == []
    assert result.decision is not None and result.decision.confidence > 0.97
    strict = CascadeRouter(
        student,
        teacher,
        ThresholdPolicy("mean_logprob", 0.9),
        CascadeConfig(sampled_confidence="sampled_token"),
    )
    escalated = await strict.route(GenerationRequest(prompt="capital of France?", temperature=1.0))
    assert escalated.tier == "teacher"
