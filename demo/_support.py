"""The bundled "support" domain: chat requests to a customer-support assistant.

Every request has the application's system prompt, sometimes an earlier exchange, and
one question from a task family. Families were picked by measuring SmolLM2-135M-Instruct
(the real preset's teacher): its greedy answers to these are short, end on their own and
follow one pattern per family ("The order number in this message is 4818.", "The plural
of knife is knives."), while open support questions ("Where is my order 3682?") made it
ramble to the length limit. ``bench/real_loop.py`` reports the consistency per family.

The student is bootstrapped on ``SUPPORT_BOOTSTRAP``; ``SUPPORT_DRIFT`` is what traffic
drifts onto. Sampling is seeded; ``support_route_label`` recovers a request's family
from its last user turn (the route label the feedback events carry).

Two structured families (``STRUCTURED_FAMILIES``) carry an output contract, as the
applications distillation pays off for send it: ``ticket_json`` extracts
``{order_number, intent, urgency}`` from a ticket through ``response_format``
(``json_schema``, enums for intent and urgency), ``tool_call`` asks an agent to act on a
ticket with ``tools`` (``lookup_order``, ``escalate_to_human``) and ``tool_choice:
required``. Both are answered by the teacher under the same constraints the student
decodes with. The bundled student knows neither: ``STRUCTURED_DRIFT`` (both) is what the
``structured`` workload's traffic drifts onto, so one refresh has to teach the student a
JSON shape and a tool-call shape it never wrote.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "STRUCTURED_DRIFT",
    "STRUCTURED_FAMILIES",
    "SUPPORT_BOOTSTRAP",
    "SUPPORT_DRIFT",
    "SUPPORT_FAMILIES",
    "TICKET_SCHEMA",
    "TICKET_TOOLS",
    "SUPPORT_SYSTEM_PROMPT",
    "SupportFamily",
    "SupportRequest",
    "sample_support",
    "support_route_label",
]

SUPPORT_SYSTEM_PROMPT = "You are a customer support assistant for Acme Online. Answer briefly."

# Earlier turns a conversation may carry before its question (none, or one exchange).
HISTORIES: tuple[tuple[tuple[str, str], ...], ...] = (
    (),
    (("Hi there!", "Hello! How can I help you today?"),),
    (("Hello, I have a question.", "Of course! What would you like to know?"),),
)

_COUNTRIES = [
    "France",
    "Germany",
    "Italy",
    "Spain",
    "Portugal",
    "Japan",
    "China",
    "India",
    "Canada",
    "Mexico",
    "Brazil",
    "Argentina",
    "Egypt",
    "Kenya",
    "Nigeria",
    "Russia",
    "Norway",
    "Sweden",
    "Finland",
    "Denmark",
    "Poland",
    "Greece",
    "Turkey",
    "Iran",
    "Iraq",
    "Israel",
    "Australia",
    "Thailand",
    "Vietnam",
    "Indonesia",
    "Peru",
    "Chile",
    "Cuba",
    "Ireland",
    "Austria",
    "Belgium",
    "Netherlands",
    "Switzerland",
    "Hungary",
    "Ukraine",
]
_NOUNS = [
    "mouse",
    "child",
    "box",
    "city",
    "knife",
    "tooth",
    "foot",
    "man",
    "woman",
    "person",
    "leaf",
    "wolf",
    "baby",
    "party",
    "story",
    "bus",
    "glass",
    "dish",
    "fox",
    "church",
    "potato",
    "hero",
    "goose",
    "cactus",
    "sheep",
    "fish",
    "deer",
    "wife",
    "loaf",
    "thief",
    "shelf",
    "calf",
]
_ADJECTIVES = [
    "hot",
    "big",
    "fast",
    "happy",
    "early",
    "light",
    "open",
    "old",
    "hard",
    "wet",
    "rich",
    "young",
    "tall",
    "strong",
    "loud",
    "full",
    "clean",
    "dark",
    "high",
    "long",
    "thick",
    "soft",
    "heavy",
    "cheap",
    "easy",
    "good",
    "right",
    "near",
    "deep",
    "sweet",
]
_ORDER_MESSAGES = (
    "Order #{n} has not arrived yet.",
    "My order #{n} arrived damaged.",
    "Please cancel order #{n}.",
    "I was charged twice for order #{n}.",
)


@dataclass(frozen=True)
class SupportFamily:
    """A task family: how its questions are drawn, and how its route is recognised."""

    name: str
    description: str
    draw: Callable[[random.Random], tuple[str, str]]
    """Returns (question, key): the key is the entity a faithful answer repeats."""
    pattern: re.Pattern[str]
    contract: dict[str, Any] = field(default_factory=dict)
    """Request fields beyond the messages (``response_format``, ``tools``, ``tool_choice``)."""


def _order(rng: random.Random) -> tuple[str, str]:
    n = str(rng.randint(1000, 9999))
    message = rng.choice(_ORDER_MESSAGES).format(n=n)
    return f'What is the order number in this message? "{message}"', n


def _pick(template: str, pool: Sequence[str]) -> Callable[[random.Random], tuple[str, str]]:
    def draw(rng: random.Random) -> tuple[str, str]:
        word = rng.choice(pool)
        return template.format(word), word

    return draw


SUPPORT_FAMILIES: tuple[SupportFamily, ...] = (
    SupportFamily(
        "order_number",
        "extract the order number from a quoted customer message",
        _order,
        re.compile(r"^What is the order number in this message\?"),
    ),
    SupportFamily(
        "capital",
        "short factual question: a country's capital",
        _pick("What is the capital of {}?", _COUNTRIES),
        re.compile(r"^What is the capital of "),
    ),
    SupportFamily(
        "plural",
        "short factual question: a noun's plural",
        _pick("What is the plural of {}?", _NOUNS),
        re.compile(r"^What is the plural of "),
    ),
    SupportFamily(
        "opposite",
        "short factual question: an adjective's opposite",
        _pick("What is the opposite of {}?", _ADJECTIVES),
        re.compile(r"^What is the opposite of "),
    ),
)
TICKET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "order_number": {"type": "string", "pattern": "^[0-9]{4}$"},
        "intent": {"enum": ["missing", "damaged", "cancel", "billing"]},
        "urgency": {"enum": ["low", "normal", "high"]},
    },
    "required": ["order_number", "intent", "urgency"],
    "additionalProperties": False,
}
"""The ``ticket_json`` family's schema (``response_format`` ``json_schema``, strict)."""

TICKET_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up the status of an order by its number.",
            "parameters": {
                "type": "object",
                "properties": {"order_number": {"type": "string", "pattern": "^[0-9]{4}$"}},
                "required": ["order_number"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "escalate_to_human",
            "description": "Hand the ticket to a human agent.",
            "parameters": {
                "type": "object",
                "properties": {"reason": {"enum": ["damaged", "billing", "angry", "other"]}},
                "required": ["reason"],
                "additionalProperties": False,
            },
        },
    },
]
"""The ``tool_call`` family's tools."""

_TICKETS = (
    ("missing", "Order #{n} has not arrived yet."),
    ("missing", "Where is my order #{n}? It is late."),
    ("damaged", "My order #{n} arrived damaged."),
    ("cancel", "Please cancel order #{n}."),
    ("billing", "I was charged twice for order #{n}."),
)
_URGENCY = ("", " Please hurry, I need it today!", " No rush.")


def _ticket(rng: random.Random) -> tuple[str, str]:
    n = str(rng.randint(1000, 9999))
    _, text = rng.choice(_TICKETS)
    message = text.format(n=n) + rng.choice(_URGENCY)
    return f'Extract the order number, intent and urgency from this ticket as JSON: "{message}"', n


def _agent_ticket(rng: random.Random) -> tuple[str, str]:
    n = str(rng.randint(1000, 9999))
    _, text = rng.choice(_TICKETS)
    return f'Handle this ticket with one tool call: "{text.format(n=n)}"', n


STRUCTURED_FAMILIES: tuple[SupportFamily, ...] = (
    SupportFamily(
        "ticket_json",
        "extract {order_number, intent, urgency} from a ticket (response_format json_schema)",
        _ticket,
        re.compile(r"^Extract the order number, intent and urgency from this ticket"),
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "ticket", "schema": TICKET_SCHEMA, "strict": True},
            }
        },
    ),
    SupportFamily(
        "tool_call",
        "act on a ticket with one tool call (tools, tool_choice required)",
        _agent_ticket,
        re.compile(r"^Handle this ticket with one tool call"),
        {"tools": TICKET_TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
    ),
)
_BY_NAME = {f.name: f for f in (*SUPPORT_FAMILIES, *STRUCTURED_FAMILIES)}
SUPPORT_BOOTSTRAP: tuple[str, ...] = ("order_number", "capital")
SUPPORT_DRIFT: tuple[str, ...] = ("plural",)
STRUCTURED_DRIFT: tuple[str, ...] = ("ticket_json", "tool_call")


@dataclass(frozen=True)
class SupportRequest:
    family: str
    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs, system prompt first, the question last."""
    key: str
    contract: dict[str, Any] = field(default_factory=dict)
    """The family's request fields beyond the messages (empty for free-text families)."""

    @property
    def question(self) -> str:
        return self.messages[-1][1]

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def as_body(self, model: str = "distillery", **extra: Any) -> dict[str, Any]:
        """The request as an application sends it to ``/v1/chat/completions``."""
        return {"model": model, "messages": self.as_dicts(), **self.contract, **extra}


def _conversation(question: str, history: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    turns: list[tuple[str, str]] = [("system", SUPPORT_SYSTEM_PROMPT)]
    for user, assistant in history:
        turns += [("user", user), ("assistant", assistant)]
    turns.append(("user", question))
    return tuple(turns)


def sample_support(families: Sequence[str], n: int, rng: random.Random) -> list[SupportRequest]:
    """``n`` requests spread round-robin over ``families``."""
    chosen = [_family(name) for name in families]
    out: list[SupportRequest] = []
    for i in range(n):
        family = chosen[i % len(chosen)]
        question, key = family.draw(rng)
        conversation = _conversation(question, rng.choice(HISTORIES))
        out.append(SupportRequest(family.name, conversation, key, family.contract))
    return out


def _family(name: str) -> SupportFamily:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown support family {name!r} (known: {', '.join(_BY_NAME)})") from None


def support_route_label(text: str) -> str | None:
    """The family of a question (the request's last user turn), or None."""
    stripped = text.strip()
    for family in (*SUPPORT_FAMILIES, *STRUCTURED_FAMILIES):
        if family.pattern.match(stripped):
            return family.name
    return None
