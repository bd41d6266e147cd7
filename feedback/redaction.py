"""PII redaction applied before an event leaves the gateway.

Redacted: the prompt, every turn's content and its tool calls' arguments (the strings
inside them, so the arguments stay a JSON object), the answers, corrections and comments.
Not redacted: the tools the request offered and its ``response_format`` (the
application's own definitions, not user data). A JSON answer is redacted as text, so a
redaction can make it unparsable: the dataset then drops it as breaking its contract.

Patterns are deliberately conservative (false positives cost a training example, false
negatives leak data). Card-like numbers are confirmed with the Luhn checksum so that,
say, a 16-digit order id is not blanked for no reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from feedback.schema import EscalationEvent, EventMessage, EventToolCall

__all__ = ["DEFAULT_PATTERNS", "Redactor"]

DEFAULT_PATTERNS: dict[str, str] = {
    "EMAIL": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "CARD": r"\b\d(?:[ -]?\d){12,18}\b",
    "PHONE": r"(?<![\w+])(?:\+?\d{1,3}[ .-]?)?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}\b",
}


def _luhn_ok(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@dataclass
class Redactor:
    """Replaces matches with ``[LABEL]``; ``extra`` adds site-specific patterns."""

    extra: dict[str, str] = field(default_factory=dict)
    enabled: bool = True

    def __post_init__(self) -> None:
        # Order matters: cards before phones, since a card number also looks like digits.
        self._patterns = [(label, re.compile(p)) for label, p in {**DEFAULT_PATTERNS, **self.extra}.items()]

    def redact(self, text: str) -> tuple[str, int]:
        if not self.enabled or not text:
            return text, 0
        count = 0
        for label, pattern in self._patterns:

            def sub(match: re.Match[str], _label: str = label) -> str:
                nonlocal count
                if _label == "CARD" and not _luhn_ok(match.group(0)):
                    return match.group(0)
                count += 1
                return f"[{_label}]"

            text = pattern.sub(sub, text)
        return text, count

    def redact_event(self, event: EscalationEvent) -> EscalationEvent:
        updates: dict[str, object] = {}
        total = 0
        for name in ("prompt", "student_answer", "teacher_answer", "correction", "comment"):
            value = getattr(event, name)
            if isinstance(value, str):
                clean, n = self.redact(value)
                if n:
                    updates[name] = clean
                    total += n
        if event.messages:
            msgs: list[EventMessage] = []
            for m in event.messages:
                clean, n = self.redact(m.content)
                calls: list[EventToolCall] = []
                for call in m.tool_calls:
                    arguments, k = self._redact_json(call.arguments)
                    calls.append(call.model_copy(update={"arguments": arguments}) if k else call)
                    n += k
                total += n
                msgs.append(m.model_copy(update={"content": clean, "tool_calls": tuple(calls)}) if n else m)
            updates["messages"] = tuple(msgs)
        if not total:
            return event
        return event.model_copy(update={**updates, "redactions": event.redactions + total})

    def _redact_json(self, value: Any) -> tuple[Any, int]:
        """Redacts the strings inside a JSON value (a tool call's arguments), so it stays
        the same JSON shape; numbers and keys are left as they are."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list):
            items = [self._redact_json(v) for v in value]
            return [v for v, _ in items], sum(n for _, n in items)
        if isinstance(value, dict):
            pairs = {k: self._redact_json(v) for k, v in value.items()}
            return {k: v for k, (v, _) in pairs.items()}, sum(n for _, n in pairs.values())
        return value, 0

    def redact_all(self, events: Sequence[EscalationEvent]) -> list[EscalationEvent]:
        return [self.redact_event(e) for e in events]
