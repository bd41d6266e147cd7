"""The bundled workloads as the composition root uses them: labelled requests to sample
for calibration, bootstrap seeds and the scenario, and how each goes over HTTP.

``toy``: the demo's string skills as completions, with ground truth. ``support``: chat
requests with a system prompt and sometimes an earlier turn; no ground truth (the
teacher's answer is the reference). ``structured``: the support domain's text families
the student knows, then traffic drifting onto the structured families (``ticket_json``
through ``response_format``, ``tool_call`` through ``tools``). All are plug-ins from
``demo/``; nothing below the composition root knows them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retrain import Pair
from router._contract import canonical_json

__all__ = [
    "SupportWorkload",
    "ToyWorkload",
    "WorkItem",
    "Workload",
    "answer_of",
    "demo_regression_suite",
    "workload_for",
]


@dataclass(frozen=True)
class WorkItem:
    """One request of a workload: its route, the request (as a ``Pair`` whose completion
    is the ground truth, or empty when the workload has none)."""

    route: str
    pair: Pair
    contract: dict[str, Any] = field(default_factory=dict)
    """Wire fields beyond the messages (``response_format``, ``tools``, ``tool_choice``)."""

    @property
    def truth(self) -> str | None:
        return self.pair.completion or None

    def http(self, model: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of this request against an OpenAI-compatible server."""
        if self.pair.messages is None:
            return "/v1/completions", {"model": model, "prompt": self.pair.prompt, "max_tokens": max_tokens}
        messages = [{"role": r, "content": c} for r, c in self.pair.messages]
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, **self.contract}
        return "/v1/chat/completions", body


def answer_of(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(answer text, Distillery routing info) of a completion or chat response body. Tool
    calls come back as their canonical text (name and arguments, the arguments' keys
    sorted), a JSON answer as its canonical JSON: two answers agree as text exactly when
    they agree as structures."""
    choice = body["choices"][0]
    routing = body.get("distillery")
    info = routing[0] if isinstance(routing, list) else routing
    if "message" in choice:
        message = choice["message"]
        calls = message.get("tool_calls") or []
        if calls:
            items = [
                {"name": c["function"]["name"], "arguments": _json_or_text(c["function"]["arguments"])}
                for c in calls
            ]
            return canonical_json(items), info or {}
        content = str(message.get("content") or "")
        return _canonical_if_json(content), info or {}
    return str(choice["text"]), info or {}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _canonical_if_json(text: str) -> str:
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return text
    try:
        return canonical_json(json.loads(stripped))
    except ValueError:
        return text


@dataclass(frozen=True)
class Workload:
    name: str
    chat: bool
    old_routes: tuple[str, ...]
    """What the bundled student is built on."""
    new_routes: tuple[str, ...]
    """What traffic drifts onto."""
    max_tokens: int

    @property
    def routes(self) -> tuple[str, ...]:
        return self.old_routes + self.new_routes

    def sample(self, routes: Sequence[str], n: int, rng: random.Random) -> list[WorkItem]:
        raise NotImplementedError


class ToyWorkload(Workload):
    def sample(self, routes: Sequence[str], n: int, rng: random.Random) -> list[WorkItem]:
        from demo import sample_examples

        return [
            WorkItem(e.skill, Pair(e.prompt, e.answer, e.skill, "workload"))
            for e in sample_examples(routes, n, rng)
        ]


class SupportWorkload(Workload):
    def sample(self, routes: Sequence[str], n: int, rng: random.Random) -> list[WorkItem]:
        from demo import sample_support

        return [
            WorkItem(r.family, Pair(r.question, "", r.family, "workload", r.messages), dict(r.contract))
            for r in sample_support(routes, n, rng)
        ]


def workload_for(name: str) -> Workload:
    from demo import ALL_SKILLS, STUDENT_SKILLS, SUPPORT_BOOTSTRAP, SUPPORT_DRIFT

    if name == "toy":
        new = tuple(s.name for s in ALL_SKILLS if s.name not in STUDENT_SKILLS)
        return ToyWorkload("toy", False, STUDENT_SKILLS, new, 24)
    if name == "support":
        return SupportWorkload("support", True, SUPPORT_BOOTSTRAP, SUPPORT_DRIFT, 24)
    if name == "structured":
        from demo import STRUCTURED_DRIFT

        # A JSON answer or a tool call is ~25-35 SmolLM2 tokens: 48 leaves room, and an
        # answer cut at max_tokens is invalid (it escalates), never served.
        return SupportWorkload("structured", True, SUPPORT_BOOTSTRAP, STRUCTURED_DRIFT, 48)
    raise ValueError(f"unknown workload {name!r} (toy, support, structured)")


def demo_regression_suite(per_skill: int = 100, seed: int = 31_337) -> list[Pair]:
    """The toy domain's ground-truth suite (what ``distillery demo build`` writes into the
    student's ``regression_suite.jsonl``), for tests and benchmarks that size it."""
    from demo import regression_rows

    return [Pair.from_row(r, "suite") for r in regression_rows(per_skill, seed)]
