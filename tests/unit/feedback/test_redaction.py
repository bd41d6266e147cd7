import pytest

from feedback import EscalationEvent, EventMessage, Redactor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail john.doe+x@example.co.uk now", "mail [EMAIL] now"),
        ("call +1 415-555-0132 today", "call [PHONE] today"),
        ("or (020) 7946 0958", "or [PHONE]"),
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("card 4111-1111-1111-1111", "card [CARD]"),
    ],
)
def test_pii_is_replaced(text, expected):
    assert Redactor().redact(text)[0] == expected


@pytest.mark.parametrize(
    "text", ["reverse: hello =", "order 1234567890123456", "add 12 + 34 =", "in 2024 we", "v1.2.3"]
)
def test_ordinary_text_is_untouched(text):
    assert Redactor().redact(text) == (text, 0)


def test_custom_patterns_and_disable():
    r = Redactor(extra={"EMPLOYEE": r"\bEMP-\d{5}\b"})
    assert r.redact("ask EMP-12345") == ("ask [EMPLOYEE]", 1)
    assert Redactor(enabled=False).redact("a@b.io") == ("a@b.io", 0)


def test_event_fields_and_messages_are_redacted_and_counted():
    event = EscalationEvent(
        request_id="r1",
        prompt="write to a@b.io",
        messages=(EventMessage(role="user", content="my card 4111111111111111"),),
        student_answer="ok",
        teacher_answer="sent to a@b.io",
    )
    clean = Redactor().redact_event(event)
    assert clean.prompt == "write to [EMAIL]"
    assert clean.teacher_answer == "sent to [EMAIL]"
    assert clean.messages is not None and clean.messages[0].content == "my card [CARD]"
    assert clean.redactions == 3
    assert "a@b.io" not in clean.model_dump_json()
