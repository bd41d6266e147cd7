"""Traffic for the chaos tests: send through the real gateway, classify every outcome.

Every request ends in exactly one class:
- ``answered``: HTTP 200 with a completion;
- ``clear_error``: a 4xx/503 whose body is an OpenAI-style ``{"error": {"message", "type",
  "code"}}`` (what a client can act on);
- ``bad``: anything else -- a 500, a body that is not such an error, a dropped connection,
  or no answer within the client's bound (a hang). Every scenario asserts ``bad == 0``.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from demo import format_prompt, solve

STUDENT_SKILLS = ("upper", "reverse")
TEACHER_SKILLS = ("shift", "double")


def prompts(skills: Iterable[str], n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (prompt, correct answer) pairs on the given skills."""
    rng = random.Random(seed)
    skills = list(skills)
    out = []
    for _ in range(n):
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6)))
        skill = rng.choice(skills)
        out.append((format_prompt(skill, word), solve(skill, word)))
    return out


@dataclass
class Outcome:
    kind: str  # answered | clear_error | bad
    status: int | None
    elapsed_s: float
    detail: str = ""
    request_id: str | None = None  # the feedback event's id (the completion id + "-0")
    tier: str | None = None
    model_version: str | None = None
    escalated: bool = False
    low_confidence: bool = False
    correct: bool = False
    error_code: str | None = None
    retry_after: str | None = None


def _classify(resp: httpx.Response, elapsed: float, expected: str) -> Outcome:
    try:
        body: Any = resp.json()
    except ValueError:
        return Outcome("bad", resp.status_code, elapsed, f"non-JSON body: {resp.text[:200]}")
    if resp.status_code == 200:
        info = body["distillery"][0]
        return Outcome(
            "answered",
            200,
            elapsed,
            request_id=f"{body['id']}-0",
            tier=info["tier"],
            model_version=info.get("model_version"),
            escalated=bool(info["escalated"]),
            low_confidence=bool(info["low_confidence"]),
            correct=body["choices"][0]["text"] == expected,
        )
    err = body.get("error") if isinstance(body, dict) else None
    clear = (
        isinstance(err, dict)
        and all(isinstance(err.get(k), str) and err.get(k) for k in ("message", "type", "code"))
        and (400 <= resp.status_code < 500 or resp.status_code == 503)
    )
    return Outcome(
        "clear_error" if clear else "bad",
        resp.status_code,
        elapsed,
        json.dumps(body)[:300],
        error_code=err.get("code") if isinstance(err, dict) else None,
        retry_after=resp.headers.get("retry-after"),
    )


async def _one(client: httpx.AsyncClient, url: str, model: str, prompt: str, expected: str) -> Outcome:
    started = time.monotonic()
    try:
        resp = await client.post(
            f"{url}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 16}
        )
    except httpx.TimeoutException:
        return Outcome("bad", None, time.monotonic() - started, "no answer within the client bound (hang)")
    except httpx.HTTPError as exc:
        return Outcome("bad", None, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
    return _classify(resp, time.monotonic() - started, expected)


async def send(
    url: str,
    items: list[tuple[str, str]],
    *,
    concurrency: int = 6,
    model: str = "distillery",
    client_timeout_s: float = 30.0,
    done: list[Outcome] | None = None,
) -> list[Outcome]:
    """Sends every item with at most ``concurrency`` in flight; outcomes in order.
    ``done`` (if given) receives outcomes as they finish (for a fault injected mid-run)."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=client_timeout_s, limits=limits) as client:

        async def run(prompt: str, expected: str) -> Outcome:
            async with sem:
                outcome = await _one(client, url, model, prompt, expected)
            if done is not None:
                done.append(outcome)
            return outcome

        return list(await asyncio.gather(*(run(p, e) for p, e in items)))


class Background:
    """``send`` in a thread, so a fault can be injected while requests are in flight."""

    def __init__(self, url: str, items: list[tuple[str, str]], **kwargs: Any) -> None:
        self.done: list[Outcome] = []
        self.outcomes: list[Outcome] = []
        self._thread = threading.Thread(
            target=lambda: self.outcomes.extend(asyncio.run(send(url, items, done=self.done, **kwargs))),
            daemon=True,
        )

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def wait_done(self, n: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.done) < n and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=600)


@dataclass
class Counts:
    """One scenario's line in docs/fault-tolerance.md."""

    scenario: str
    outcomes: list[Outcome] = field(default_factory=list)
    events_expected: int = 0
    events_lost: int = -1
    notes: str = ""

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def n(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    @property
    def escalated(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "answered" and o.escalated]

    def line(self) -> str:
        answered = [o for o in self.outcomes if o.kind == "answered"]
        by_tier = {t: sum(1 for o in answered if o.tier == t) for t in ("student", "teacher")}
        low = sum(1 for o in answered if o.low_confidence)
        codes: dict[str, int] = {}
        for o in self.outcomes:
            if o.kind == "clear_error":
                codes[f"{o.status} {o.error_code}"] = codes.get(f"{o.status} {o.error_code}", 0) + 1
        slowest = max((o.elapsed_s for o in self.outcomes), default=0.0)
        return (
            f"CHAOS | {self.scenario} | sent {self.sent} | answered {len(answered)} "
            f"(student {by_tier['student']}, teacher {by_tier['teacher']}, low_confidence {low}) | "
            f"clear errors {self.n('clear_error')} {codes or ''} | bad {self.n('bad')} | "
            f"escalation events {self.events_expected}, lost {self.events_lost} | "
            f"slowest {slowest:.2f}s | {self.notes}"
        )

    def bad_details(self) -> list[str]:
        return [f"{o.status}: {o.detail}" for o in self.outcomes if o.kind == "bad"][:5]
