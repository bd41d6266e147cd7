"""The bundled synthetic domain: skills whose answers can be checked exactly.

Every prompt reads ``"<skill>: <word> ="`` and the answer is the transformed word. The
skills are chosen so that a tiny transformer learns them in a few hundred steps on CPU
(position-wise maps and copies), which is what lets ``distillery demo build`` finish in
minutes while still giving the student a real gap to close when traffic drifts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ALL_SKILLS",
    "LETTERS",
    "STUDENT_SKILLS",
    "DemoExample",
    "Skill",
    "format_prompt",
    "parse_prompt",
    "sample_examples",
    "skill_by_name",
    "solve",
]

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MIN_WORD_LEN = 3
MAX_WORD_LEN = 7


def _shift(word: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in word)


@dataclass(frozen=True)
class Skill:
    """A named, exactly checkable string transform."""

    name: str
    transform: Callable[[str], str]
    description: str


ALL_SKILLS: tuple[Skill, ...] = (
    Skill("upper", str.upper, "upper-case the word"),
    Skill("reverse", lambda w: w[::-1], "reverse the word"),
    Skill("shift", _shift, "replace each letter by the next one (z -> a)"),
    Skill("double", lambda w: "".join(c + c for c in w), "write each letter twice"),
)

_SKILLS_BY_NAME = {s.name: s for s in ALL_SKILLS}
STUDENT_SKILLS: tuple[str, ...] = ("upper", "reverse")
"""What the demo student is built on; the other two are the drift it must learn."""


@dataclass(frozen=True)
class DemoExample:
    """One labelled prompt of the demo domain."""

    skill: str
    word: str

    @property
    def prompt(self) -> str:
        return format_prompt(self.skill, self.word)

    @property
    def answer(self) -> str:
        return solve(self.skill, self.word)


def skill_by_name(name: str) -> Skill:
    try:
        return _SKILLS_BY_NAME[name]
    except KeyError:
        known = ", ".join(_SKILLS_BY_NAME)
        raise ValueError(f"unknown demo skill {name!r} (known: {known})") from None


def format_prompt(skill: str, word: str) -> str:
    return f"{skill}: {word} ="


def parse_prompt(prompt: str) -> tuple[str, str] | None:
    """Recovers (skill, word) from a demo prompt, or None for anything else."""
    head, sep, rest = prompt.strip().partition(": ")
    if not sep or head not in _SKILLS_BY_NAME or not rest.endswith(" ="):
        return None
    word = rest[:-2]
    if not word or any(c not in LETTERS for c in word):
        return None
    return head, word


def solve(skill: str, word: str) -> str:
    return skill_by_name(skill).transform(word)


def sample_examples(skills: Iterable[str], n: int, rng: random.Random) -> list[DemoExample]:
    """Draws ``n`` examples spread round-robin over ``skills`` (so mixes stay balanced)."""
    names: Sequence[str] = list(skills)
    for name in names:
        skill_by_name(name)
    out: list[DemoExample] = []
    for i in range(n):
        length = rng.randint(MIN_WORD_LEN, MAX_WORD_LEN)
        word = "".join(rng.choice(LETTERS) for _ in range(length))
        out.append(DemoExample(names[i % len(names)], word))
    return out
