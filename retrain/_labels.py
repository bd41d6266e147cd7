"""Which answer teaches: label sources, their precedence, verifiers and a second teacher.

For one prompt the dataset prefers, in order:

1. ``correction``: the application's own right answer (``POST /v1/feedback``);
2. ``teacher_agreed``: a teacher answer something independent confirmed: the application
   rated it good, or a second teacher gave the same answer (``second_teacher``);
3. ``teacher`` (an escalation) and ``audit`` (a shadow audit's teacher answer to a
   missed escalation): the teacher alone.

Before a teacher answer teaches it must survive: a bad rating of it (dropped,
``rated_bad``), each configured verifier that covers its route (``verifier:<name>``) and,
when a second teacher is configured, that teacher's agreement
(``second_teacher_disagreed``; structurally for a JSON or tool-call request). Any label,
a correction too, that breaks its request's contract (``router.check_answer``: not JSON,
off its schema, an unknown function) is dropped as ``contract:<reason>``: such an answer
is never served, so it must not be taught. Tool calls are labels like any answer, in
their canonical text. Every rejection is counted by reason and recorded in the
candidate's manifest with the count of examples from each source. Corrections are the
application's ground truth and are not second-guessed by verifiers.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

from router import AgreementMetric, BackendConfig, build_backend, generate_requests
from router._contract import structural_agreement

__all__ = [
    "LABEL_PRECEDENCE",
    "SecondOpinion",
    "Verifier",
    "VerifierConfig",
    "backend_opinion",
    "build_verifiers",
]

LabelSource = Literal["correction", "teacher_agreed", "teacher", "audit"]
LABEL_PRECEDENCE: dict[str, int] = {"correction": 0, "teacher_agreed": 1, "teacher": 2, "audit": 2}
"""Lower wins for the same prompt; a tie goes to the latest."""

SecondOpinion = Callable[[Sequence[Any]], list[str]]
"""Answers for a batch of ``Pair``s from a second teacher (offline, at dataset time)."""


class VerifierConfig(BaseModel):
    """One check a teacher answer must pass before it teaches.

    Parameters:
        name (`str`): counted as ``verifier:<name>`` when it rejects.
        kind (`"json_schema" | "regex" | "python"`): the answer parses as JSON and validates
            against ``json_schema``; or matches ``pattern`` in full (``re.fullmatch``,
            after stripping surrounding whitespace); or ``entry_point``
            (``module:function``, called with ``(answer, prompt)``) returns True.
        routes (`list[str] | None`, defaults to None): the route labels it covers; None: all.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, pattern=r"^[\w.-]+$")
    kind: Literal["json_schema", "regex", "python"]
    json_schema: dict[str, Any] | None = None
    pattern: str | None = None
    entry_point: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$")
    routes: list[str] | None = None

    @model_validator(mode="after")
    def _has_what_its_kind_needs(self) -> VerifierConfig:
        needed = {"json_schema": self.json_schema, "regex": self.pattern, "python": self.entry_point}
        if needed[self.kind] is None:
            field = {"json_schema": "json_schema", "regex": "pattern", "python": "entry_point"}[self.kind]
            raise ValueError(f"a {self.kind} verifier needs {field}")
        if self.kind == "json_schema":
            try:
                jsonschema.Draft202012Validator.check_schema(self.json_schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"json_schema is not a valid JSON Schema: {exc.message}") from None
        if self.kind == "regex":
            re.compile(self.pattern or "")
        return self


@dataclass(frozen=True)
class Verifier:
    name: str
    routes: frozenset[str] | None
    check: Callable[[str, str], bool]
    """``(answer, prompt) -> passes``."""

    def covers(self, route: str | None) -> bool:
        return self.routes is None or (route is not None and route in self.routes)

    def rejects(self, answer: str, prompt: str, route: str | None) -> bool:
        """The answer is on a route this verifier covers and fails its check."""
        return self.covers(route) and not self.check(answer, prompt)

    @property
    def reason(self) -> str:
        return f"verifier:{self.name}"


def _json_schema_check(schema: dict[str, Any]) -> Callable[[str, str], bool]:
    validator = jsonschema.Draft202012Validator(schema)

    def check(answer: str, prompt: str) -> bool:
        try:
            value = json.loads(answer)
        except ValueError:
            return False
        return bool(validator.is_valid(value))

    return check


def _regex_check(pattern: str) -> Callable[[str, str], bool]:
    compiled = re.compile(pattern)
    return lambda answer, prompt: compiled.fullmatch(answer.strip()) is not None


def _entry_point_check(entry_point: str) -> Callable[[str, str], bool]:
    module, _, name = entry_point.partition(":")
    function: Callable[[str, str], object] = getattr(importlib.import_module(module), name)
    return lambda answer, prompt: bool(function(answer, prompt))


def build_verifiers(configs: Sequence[VerifierConfig]) -> list[Verifier]:
    out: list[Verifier] = []
    for cfg in configs:
        if cfg.kind == "json_schema":
            assert cfg.json_schema is not None
            check = _json_schema_check(cfg.json_schema)
        elif cfg.kind == "regex":
            assert cfg.pattern is not None
            check = _regex_check(cfg.pattern)
        else:
            assert cfg.entry_point is not None
            check = _entry_point_check(cfg.entry_point)
        out.append(Verifier(cfg.name, frozenset(cfg.routes) if cfg.routes is not None else None, check))
    return out


def second_opinions(opinion: SecondOpinion, pairs: Sequence[Any], agreement: AgreementMetric) -> list[bool]:
    """Whether the second teacher gives each pair's answer too: the same parsed JSON, or
    the same functions with the same arguments, for a structured request; ``agreement``
    for free text."""
    if not pairs:
        return []
    answers = opinion(pairs)
    if len(answers) != len(pairs):
        raise ValueError(f"the second teacher answered {len(answers)} of {len(pairs)} prompts")
    verdicts = []
    for answer, pair in zip(answers, pairs, strict=True):
        structural = structural_agreement(pair.to_request(1), answer, pair.completion)
        verdicts.append(agreement(answer, pair.completion) if structural is None else structural)
    return verdicts


def backend_opinion(config: BackendConfig, *, max_tokens: int, default_dir: Path) -> SecondOpinion:
    """A second teacher served by any backend (a local directory, vLLM, an OpenAI-compatible
    endpoint), loaded for one dataset build and closed after it."""

    def answer(pairs: Sequence[Any]) -> list[str]:
        backend = build_backend(config, default_dir=default_dir, model_id="second-teacher")

        async def run() -> list[str]:
            try:
                gens = await generate_requests(backend, [p.to_request(max_tokens) for p in pairs])
            finally:
                await backend.close()
            return [g.text for g in gens]

        return asyncio.run(run())

    return answer
