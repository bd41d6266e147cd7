"""Structured requests are distilled as they were served: the contract (``response_format``,
tools, ``tool_choice``) and the tool turns travel event -> store row -> Pair -> request,
and the request renders token for token as the served one; labels that break their
contract never teach."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.model_dir import ToolFormat
from demo import build_tokenizer
from feedback import EscalationEvent, Redactor, SQLiteStore
from feedback._store import holdout_bucket
from gateway._feedback_sink import FeedbackSink
from retrain import DistillConfig, Pair, build_dataset, load_pairs, save_pairs
from retrain._train import _rows
from router import CascadeResult, ChatTurn, GenerationRequest, render_prompt
from router._contract import TOOL_CALL_OPEN, canonical_json, tool_calls_text
from router._policy import Decision
from router._types import ResponseFormat, ToolCall, ToolSpec
from tests.fakes.clients import FakeProducer, make_generation

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""SmolLM2's template shape: plain ChatML, no tool section (tools render in the prompt style)."""

ADDRESS = {
    "type": "object",
    "properties": {"zip": {"type": "string"}, "city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

JSON_REQUEST = GenerationRequest(
    messages=(
        ChatTurn(role="system", content="You extract addresses."),
        ChatTurn(role="user", content="I live at 12 Rue de Rivoli, Paris."),
    ),
    max_tokens=40,
    response_format=ResponseFormat(type="json_schema", schema_text=canonical_json(ADDRESS), name="address"),
    request_id="req-json",
)

FORCED_TOOL_REQUEST = GenerationRequest(
    messages=(
        ChatTurn(role="user", content="Weather in Rome?"),
        ChatTurn(
            role="assistant",
            content="",
            tool_calls=(ToolCall(id="call_1", name="get_weather", arguments=json.dumps({"city": "Rome"})),),
        ),
        ChatTurn(role="tool", content='{"temp_c": 21}', tool_call_id="call_1"),
        ChatTurn(role="user", content="And in Paris?"),
    ),
    max_tokens=40,
    tools=(
        ToolSpec(name="get_weather", description="Current weather.", parameters=canonical_json(WEATHER)),
        ToolSpec(name="get_time", parameters=canonical_json({"type": "object", "properties": {}})),
    ),
    tool_choice="get_weather",
    parallel_tool_calls=False,
    request_id="req-tool",
)


def _escalated(request: GenerationRequest, teacher_text: str) -> EscalationEvent:
    """The event the gateway's sink makes of an escalation (redacted as the producer does)."""
    producer = FakeProducer()
    sink = FeedbackSink(producer, sample_rate=0.0)  # type: ignore[arg-type]
    student = make_generation("?", 0.5, "student-v")
    teacher = make_generation(teacher_text, 0.99, "teacher-v")
    result = CascadeResult(teacher, "teacher", Decision(0.5, True), True, True, student, 0.01, 0.02, "ok")
    sink.record("chat", request, result, threshold=0.9, scorer="mean_logprob")
    (event,) = producer.events
    return Redactor().redact_event(event)


def test_audits_and_ratings_carry_the_contract_too():
    from gateway._ledger import IssuedAnswer
    from router import AuditVerdict

    producer = FakeProducer()
    sink = FeedbackSink(producer, sample_rate=0.0)  # type: ignore[arg-type]
    student, teacher = make_generation("[]", 0.99, "s"), make_generation("[]", 0.99, "t")
    sink.record_audit(AuditVerdict(FORCED_TOOL_REQUEST, student, teacher, False, 0.1))
    issued = IssuedAnswer(FORCED_TOOL_REQUEST, "teacher", None, None, "[]", "t", None, "key")
    sink.record_rating(issued, 1.0, None, None)
    for event in producer.events:
        assert (event.output_kind, event.tool_choice, len(event.tools)) == ("tool_call", "get_weather", 2)
        assert event.messages is not None and event.messages[1].tool_calls[0].name == "get_weather"
    assert [e.kind for e in producer.events] == ["audit", "feedback"]


def _stored(event: EscalationEvent, tmp_path: Path) -> EscalationEvent:
    store = SQLiteStore(tmp_path / "f.db")
    try:
        store.insert([EscalationEvent.from_wire(event.to_wire())])
        (back,) = store.events()
    finally:
        store.close()
    return back


@pytest.fixture(scope="module")
def tok() -> Any:
    t = build_tokenizer()
    t.chat_template = CHATML
    return t


def test_a_json_pair_round_trips_and_renders_as_the_served_request(tmp_path, tok):
    event = _stored(_escalated(JSON_REQUEST, '{"city": "Paris", "zip": "75001"}'), tmp_path)
    assert event.output_kind == "json" and event.response_format is not None
    assert event.response_format.json_schema == ADDRESS  # the schema as a JSON object

    pair = Pair.from_event(event, event.teacher_answer or "")
    request = pair.to_request(JSON_REQUEST.max_tokens)
    assert request.response_format == JSON_REQUEST.response_format
    assert request.messages == JSON_REQUEST.messages
    assert request.output_kind == "json"
    assert render_prompt(tok, request) == render_prompt(tok, JSON_REQUEST)

    save_pairs([pair], tmp_path / "p.jsonl")
    (back,) = load_pairs(tmp_path / "p.jsonl", pair.source)
    assert back == pair

    # The same conversation under another schema is another prompt; without one, a third.
    other = GenerationRequest(
        messages=JSON_REQUEST.messages,
        response_format=ResponseFormat(type="json_object"),
        request_id="req-other",
    )
    other_pair = Pair.from_event(_escalated(other, "{}"), "{}")
    plain = Pair(pair.prompt, pair.completion, messages=pair.messages)
    assert len({pair.key, other_pair.key, plain.key}) == 3


def test_a_forced_tool_call_renders_with_the_opener_and_trains_on_the_canonical_list(tmp_path, tok):
    calls = (ToolCall(name="get_weather", arguments=json.dumps({"city": "Paris"})),)
    teacher_text = tool_calls_text(calls, forced=True)
    event = _stored(_escalated(FORCED_TOOL_REQUEST, teacher_text), tmp_path)
    assert event.output_kind == "tool_call" and event.tool_choice == "get_weather"
    assert event.messages is not None and event.messages[1].tool_calls[0].arguments == {"city": "Rome"}
    assert event.messages[2].tool_call_id == "call_1"

    pair = Pair.from_event(event, event.teacher_answer or "")
    request = pair.to_request(FORCED_TOOL_REQUEST.max_tokens)
    assert request.tools == FORCED_TOOL_REQUEST.tools
    assert (request.tool_choice, request.parallel_tool_calls) == ("get_weather", False)
    assert request.messages == FORCED_TOOL_REQUEST.messages

    fmt = ToolFormat(style="prompt")
    served = render_prompt(tok, FORCED_TOOL_REQUEST, fmt)
    assert render_prompt(tok, request, fmt) == served
    assert served.endswith(TOOL_CALL_OPEN) and "get_weather" in served and "<tool_response>" in served

    (row,) = _rows(tok, [pair], fmt)
    assert row == {
        "prompt": served,
        "completion": '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    }

    save_pairs([pair], tmp_path / "p.jsonl")
    (back,) = load_pairs(tmp_path / "p.jsonl", pair.source)
    assert back == pair and render_prompt(tok, back.to_request(40), fmt) == served


def test_plain_chat_sets_still_go_to_trl_as_conversations(tok):
    pairs = [Pair("Hi", "Hello", messages=(("user", "Hi"),)), Pair("Hi", "{}", messages=(("user", "Hi"),))]
    rows = _rows(tok, pairs)
    assert rows[0]["prompt"] == [{"role": "user", "content": "Hi"}]


def test_a_teacher_tool_call_in_another_spelling_is_stored_in_the_canonical_text():
    text = ' [ {"name":"get_weather","arguments":{"city":"Paris"}} ] '
    pair = Pair.from_event(_escalated(FORCED_TOOL_REQUEST, text), text.strip())
    kept, why = pair.under_contract()
    assert why is None and kept is not None
    assert kept.completion == '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'


def _train_ids(n: int) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < n:
        if holdout_bucket(f"req-{i}") >= 100:  # training side at holdout_fraction 0.01
            out.append(f"req-{i}")
        i += 1
    return out


def test_structured_labels_that_break_their_contract_are_rejected_and_counted(tmp_path):
    ids = _train_ids(5)

    def event(rid: str, request: GenerationRequest, answer: str, user: str) -> EscalationEvent:
        messages = (*(request.messages or ())[:-1], ChatTurn(role="user", content=user))
        served = request.model_copy(update={"messages": messages, "request_id": rid})
        return _escalated(served, answer)

    store = SQLiteStore(tmp_path / "f.db")
    store.insert(
        [
            event(ids[0], JSON_REQUEST, '{"city": "Paris"}', "Paris"),
            event(ids[1], JSON_REQUEST, "Paris, France", "Lyon"),  # not JSON
            event(ids[2], JSON_REQUEST, '{"zip": "69001"}', "Nice"),  # no city: off its schema
            event(ids[3], FORCED_TOOL_REQUEST, '[{"name": "get_stock", "arguments": {}}]', "Oslo?"),
            event(
                ids[4],
                FORCED_TOOL_REQUEST,
                '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
                "Bonn?",
            ),
        ]
    )
    ds = build_dataset(store, [], DistillConfig(min_new_examples=1, holdout_fraction=0.01, replay_share=0.0))
    store.close()
    assert sorted(p.prompt for p in ds.train) == ["Bonn?", "Paris"]
    assert ds.rejected == {"contract:not_json": 1, "contract:schema": 1, "contract:unknown_tool": 1}
    assert ds.dropped == 3


def test_a_correction_that_breaks_the_contract_does_not_teach(tmp_path):
    (rid,) = _train_ids(1)
    request = JSON_REQUEST.model_copy(update={"request_id": rid})
    escalation = _escalated(request, '{"city": "Paris"}')
    rating = escalation.model_copy(
        update={"kind": "feedback", "tier": "teacher", "rating": 1.0, "correction": "It is Paris."}
    )
    store = SQLiteStore(tmp_path / "f.db")
    store.insert([escalation, rating])
    ds = build_dataset(store, [], DistillConfig(min_new_examples=1, holdout_fraction=0.01, replay_share=0.0))
    store.close()
    ((pair),) = ds.train
    assert (pair.completion, pair.source) == ('{"city": "Paris"}', "teacher_agreed")
    assert ds.rejected == {"contract:not_json": 1}


def test_old_events_and_rows_read_as_text_requests():
    old = EscalationEvent.model_validate(
        {"schema_version": 2, "request_id": "r", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert old.output_kind == "text" and old.tools == () and old.response_format is None
    pair = Pair.from_event(old, "hello")
    assert (pair.contract, pair.tool_turns) == (None, None)
    assert pair.key == json.dumps((("user", "hi"),))
    assert pair.to_request(8) == GenerationRequest(
        messages=(ChatTurn(role="user", content="hi"),), max_tokens=8
    )
    assert Pair.from_row({"prompt": "p", "completion": "c"}, "replay") == Pair("p", "c", None, "replay")


def test_tool_call_arguments_are_redacted_and_stay_a_json_object():
    request = FORCED_TOOL_REQUEST.model_copy(
        update={
            "messages": (
                ChatTurn(
                    role="assistant",
                    content="",
                    tool_calls=(ToolCall(name="get_weather", arguments=json.dumps({"city": "mail a@b.io"})),),
                ),
                ChatTurn(role="user", content="write to a@b.io"),
            )
        }
    )
    event = _escalated(request, "[]")
    assert event.messages is not None
    assert event.messages[0].tool_calls[0].arguments == {"city": "mail [EMAIL]"}
    assert event.messages[1].content == "write to [EMAIL]"
    assert event.redactions == 2 and "a@b.io" not in event.model_dump_json()
