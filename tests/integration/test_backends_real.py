"""Real backends on the real demo models, without Ray: log-probs, the HTTP teacher, timeouts."""

from __future__ import annotations

import asyncio
import math

import pytest

from router import (
    CascadeConfig,
    CascadeRouter,
    Generation,
    GenerationRequest,
    OpenAIHTTPBackend,
    ThresholdPolicy,
)
from router._transformers_backend import TransformersBackend
from router.errors import TeacherUnavailable
from tests.conftest import free_port

pytestmark = pytest.mark.integration


class _One:
    def __init__(self, backend) -> None:
        self.backend = backend

    async def generate(self, request: GenerationRequest) -> Generation:
        return (await self.backend.generate([request]))[0]


@pytest.fixture(scope="module")
def student(demo_models):
    return TransformersBackend(demo_models / "student", model_id="student")


def test_batched_generation_matches_single_and_reports_real_logprobs(student):
    prompts = ["reverse: abc =", "upper: hello =", "shift: abc =", "reverse: abcdefg ="]
    batch = asyncio.run(student.generate([GenerationRequest(prompt=p) for p in prompts]))
    singles = [asyncio.run(student.generate([GenerationRequest(prompt=p)]))[0] for p in prompts]
    for b, s in zip(batch, singles, strict=True):
        assert b.text == s.text
        assert b.token_logprobs == pytest.approx(s.token_logprobs, abs=1e-4)
    known = batch[0]
    assert known.text == "cba" and known.finish_reason == "stop"
    assert len(known.token_logprobs) == len(known.tokens) + 1  # + the end-of-text token
    assert all(lp <= 0 for lp in known.token_logprobs)
    assert math.exp(min(known.token_logprobs)) > 0.9
    assert math.exp(min(batch[2].token_logprobs)) < math.exp(min(known.token_logprobs))


def test_max_tokens_and_stop_sequences(student):
    [cut] = asyncio.run(student.generate([GenerationRequest(prompt="upper: abcdef =", max_tokens=3)]))
    assert cut.text == "ABC" and cut.finish_reason == "length" and cut.completion_tokens == 3
    [stopped] = asyncio.run(student.generate([GenerationRequest(prompt="upper: abcdef =", stop=("D",))]))
    assert stopped.text == "ABC" and stopped.finish_reason == "stop"


def test_openai_http_backend_against_the_live_gateway(serve_url):
    teacher = OpenAIHTTPBackend(f"{serve_url}", "distillery-teacher", timeout_s=30)
    [gen] = asyncio.run(teacher.generate([GenerationRequest(prompt="double: abc =", max_tokens=16)]))
    assert gen.text == "aabbcc"
    assert len(gen.token_logprobs) == 6 and all(lp <= 0 for lp in gen.token_logprobs)
    assert gen.model_version == "distillery-teacher"


def test_unreachable_http_teacher_fails_fast_with_a_typed_error(student):
    dead = OpenAIHTTPBackend(f"http://127.0.0.1:{free_port()}", "teacher", timeout_s=2)
    router = CascadeRouter(
        _One(student), _One(dead), ThresholdPolicy("mean_logprob", 0.99), CascadeConfig(teacher_timeout_s=3)
    )
    with pytest.raises(TeacherUnavailable):
        asyncio.run(asyncio.wait_for(router.route(GenerationRequest(prompt="shift: abc =")), 10))
    # A confident student answer never needs the teacher, down or not.
    ok = asyncio.run(router.route(GenerationRequest(prompt="reverse: abc =")))
    assert ok.tier == "student" and ok.generation.text == "cba"


def test_counting_tokens_while_a_batch_generates_does_not_corrupt_it(student):
    """Regression: length checks on the event loop raced the worker thread's padding."""
    import threading

    stop = threading.Event()
    req = GenerationRequest(prompt="reverse: abcdefg =")

    def count_forever() -> None:
        while not stop.is_set():
            student.count_prompt_tokens(req)

    counter = threading.Thread(target=count_forever, daemon=True)
    counter.start()
    try:
        prompts = [f"upper: {'abcdefg'[: 3 + i % 5]} =" for i in range(64)]
        for _ in range(20):
            gens = student.generate_sync([GenerationRequest(prompt=p) for p in prompts])
            assert [g.text for g in gens] == [p.split(" ")[1].upper() for p in prompts]
    finally:
        stop.set()
        counter.join(5)
