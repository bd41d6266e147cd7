"""Schema v3: an event keeps the request's contract and tool turns, on the wire and in the store."""

from feedback import SCHEMA_VERSION, EscalationEvent, EventMessage, Redactor, SQLiteStore
from feedback.schema import EventResponseFormat, EventTool, EventToolCall

EVENT = EscalationEvent(
    request_id="r1",
    messages=(
        EventMessage(role="user", content="weather?"),
        EventMessage(
            role="assistant",
            content="",
            tool_calls=(
                EventToolCall(id="c1", name="get_weather", arguments={"city": "Rome", "days": [1, 2]}),
                EventToolCall(id="c2", name="raw", arguments="not an object"),
            ),
        ),
        EventMessage(role="tool", content="21C", tool_call_id="c1", name="get_weather"),
    ),
    teacher_answer='[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    tools=(
        EventTool(
            name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}}
        ),
    ),
    tool_choice="required",
    parallel_tool_calls=False,
    output_kind="tool_call",
)


def test_v3_fields_round_trip_through_the_wire_and_the_store(tmp_path):
    assert EVENT.schema_version == SCHEMA_VERSION == 3
    assert EscalationEvent.from_wire(EVENT.to_wire()) == EVENT
    json_event = EVENT.model_copy(
        update={
            "request_id": "r2",
            "tools": (),
            "tool_choice": None,
            "output_kind": "json",
            "response_format": EventResponseFormat(
                type="json_schema", json_schema={"type": "object"}, name="x"
            ),
        }
    )
    store = SQLiteStore(tmp_path / "f.db")
    store.insert([EVENT, json_event])
    assert store.events() == [EVENT, json_event]
    store.close()


def test_a_tool_call_keeps_its_arguments_text_when_redaction_finds_nothing():
    assert Redactor().redact_event(EVENT) is EVENT
