"""Hostile input against the real app (Serve, both tiers, the feedback stream).

A property-based pass (hypothesis, bounded examples) over both routes and every model
name: text from every Unicode category including lone surrogates, NUL and other control
characters, combining marks, bidi controls, 4-byte characters and very long single
"words"; numbers at and past their limits; nested junk in every field. The properties:
no response of 500 or more (the tiers are healthy here, so any 5xx is the server's own
failure), no body with internals (a traceback, a file path, a pid, colour codes), and the
teacher's circuit breaker still closed afterwards (a client's bad request must never
count against a tier). Plus the regression that started it: a lone surrogate.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

MODELS = ["distillery", "distillery-student", "distillery-teacher"]
INTERNALS = re.compile(
    r"Traceback|\x1b\[|File \"|site-packages|\.py\b|\bpid[=: ]\d|actor_id|ray::|/usr/|/root/|/work/", re.I
)
OUTAGE_CODES = {"teacher_unavailable", "teacher_timeout", "student_unavailable"}

# Characters a client can send that a tokenizer may choke on.
HOSTILE_CHARS = st.one_of(
    st.characters(codec="utf-8"),  # every category that UTF-8 can carry
    st.sampled_from(["\x00", "\x1b", "\x7f", "\u200f", "\u202e", "\u2066", "\ufeff", "\u0301", "\U0001f600"]),
    st.characters(categories=["Cs"]),  # lone surrogates (excluded unless asked for)
)
HOSTILE_TEXT = st.one_of(
    st.text(HOSTILE_CHARS, max_size=40),
    # a lone surrogate inside ordinary text (st.text alone rarely draws one)
    st.builds(
        lambda a, s, b: a + s + b, st.text(max_size=8), st.characters(categories=["Cs"]), st.text(max_size=8)
    ),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["a", "\u0301", "\U0001f600", "x"]), st.integers(500, 5000)
    ),
    st.sampled_from(["reverse: hello =", "shift: abc =", "", " ", "\n\n"]),
)
NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63),
    st.sampled_from([0, 1, 255, 256, 257, 10**9]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-1.0, 0.0, 2.0, 2.0001, 1e308]),
)
JUNK: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, HOSTILE_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, JUNK)


# Well-formed requests whose values are hostile: what reaches the tiers.
LIMIT_TOKENS = st.one_of(st.integers(1, 8), st.sampled_from([1, 16, 255, 256]))
TEMPERATURE = st.one_of(st.just(0.0), st.floats(0.0, 2.0), st.sampled_from([1e-9, 1.0, 2.0]))
TOP_P = st.one_of(st.just(1.0), st.floats(1e-9, 1.0), st.sampled_from([1e-9, 0.5]))


def valid_completion_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from(MODELS),
            "prompt": st.one_of(HOSTILE_TEXT, st.lists(HOSTILE_TEXT, min_size=1, max_size=3)),
        },
        optional={
            "max_tokens": LIMIT_TOKENS,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "stop": st.one_of(HOSTILE_TEXT, st.lists(HOSTILE_TEXT, max_size=3)),
            "stream": st.booleans(),
            "logprobs": st.integers(0, 5),
            "metadata": st.dictionaries(st.text(max_size=8), HOSTILE_TEXT, max_size=3),
        },
    )


def valid_chat_bodies() -> st.SearchStrategy[dict[str, Any]]:
    message = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant", "tool", "developer"]),
            "content": HOSTILE_TEXT,
        }
    )
    user = st.fixed_dictionaries({"role": st.just("user"), "content": HOSTILE_TEXT})
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from(MODELS),
            "messages": st.builds(lambda head, last: [*head, last], st.lists(message, max_size=3), user),
        },
        optional={
            "max_tokens": LIMIT_TOKENS,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "stop": HOSTILE_TEXT,
            "stream": st.booleans(),
            "logprobs": st.booleans(),
        },
    )


def completion_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": _maybe(st.sampled_from(MODELS))},
        optional={
            "prompt": _maybe(st.one_of(HOSTILE_TEXT, st.lists(HOSTILE_TEXT, max_size=3))),
            "max_tokens": _maybe(NUMBERS),
            "temperature": _maybe(NUMBERS),
            "top_p": _maybe(NUMBERS),
            "stop": _maybe(st.one_of(HOSTILE_TEXT, st.lists(HOSTILE_TEXT, max_size=3))),
            "stream": _maybe(st.booleans()),
            "logprobs": _maybe(NUMBERS),
            "n": _maybe(NUMBERS),
            "metadata": _maybe(st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=3)),
        },
    )


def chat_bodies() -> st.SearchStrategy[dict[str, Any]]:
    message = st.fixed_dictionaries(
        {
            "role": _maybe(st.sampled_from(["system", "user", "assistant", "tool", "developer"])),
            "content": _maybe(HOSTILE_TEXT),
        }
    )
    return st.fixed_dictionaries(
        {"model": _maybe(st.sampled_from(MODELS)), "messages": _maybe(st.lists(message, max_size=4))},
        optional={
            "max_tokens": _maybe(NUMBERS),
            "max_completion_tokens": _maybe(NUMBERS),
            "temperature": _maybe(NUMBERS),
            "stop": _maybe(HOSTILE_TEXT),
            "stream": _maybe(st.booleans()),
            "logprobs": _maybe(st.booleans()),
            "metadata": _maybe(st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=3)),
        },
    )


def post(url: str, path: str, body: Any) -> httpx.Response:
    # ensure_ascii: lone surrogates travel as \\udXXX escapes, as a JSON client sends them
    raw = json.dumps(body, ensure_ascii=True, allow_nan=False)
    return httpx.post(f"{url}{path}", content=raw, headers={"Content-Type": "application/json"}, timeout=90)


SEEN: Counter[str] = Counter()
"""Status and error code of every response of the pass (printed at its end, for the log)."""


def check(resp: httpx.Response) -> None:
    text = resp.text
    code = ""
    if resp.status_code != 200 and resp.headers.get("content-type", "").startswith("application/json"):
        code = str(resp.json().get("error", {}).get("code"))
    SEEN[f"{resp.status_code} {code}".strip()] += 1
    assert not INTERNALS.search(text), f"internals in a {resp.status_code} body: {text[:400]}"
    if resp.status_code >= 500:
        code = resp.json().get("error", {}).get("code")
        raise AssertionError(f"{resp.status_code} {code}: {text[:300]}")


def breaker_state(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("distillery_teacher_breaker_state"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no breaker gauge")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("route", ["completions", "chat"])
def test_a_lone_surrogate_is_a_400_before_any_tier_and_never_opens_the_breaker(serve_url, route, model):
    field = (
        '"prompt": "\\ud800"'
        if route == "completions"
        else '"messages": [{"role": "user", "content": "\\ud800"}]'
    )
    escaped = f'{{"model": "{model}", {field}, "max_tokens": 4}}'
    path = "/v1/completions" if route == "completions" else "/v1/chat/completions"
    for _ in range(7):  # more than breaker_failure_threshold (5)
        resp = httpx.post(
            f"{serve_url}{path}", content=escaped, headers={"Content-Type": "application/json"}, timeout=30
        )
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error" and "surrogate" in error["message"]
        check(resp)
    assert breaker_state(serve_url) == 0.0
    # An ordinary escalated request still reaches the teacher.
    ok = httpx.post(
        f"{serve_url}/v1/completions",
        json={"model": "distillery", "prompt": "shift: abc =", "max_tokens": 8},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.headers["x-distillery-tier"] == "teacher", ok.text


PASS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@PASS
@given(body=valid_completion_bodies())
def test_well_formed_completions_with_hostile_values_never_5xx_nor_leak_internals(serve_url, body):
    check(post(serve_url, "/v1/completions", body))


@PASS
@given(body=valid_chat_bodies())
def test_well_formed_chats_with_hostile_values_never_5xx_nor_leak_internals(serve_url, body):
    check(post(serve_url, "/v1/chat/completions", body))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=completion_bodies())
def test_junk_completions_never_5xx_nor_leak_internals(serve_url, body):
    check(post(serve_url, "/v1/completions", body))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=chat_bodies())
def test_junk_chats_never_5xx_nor_leak_internals(serve_url, body):
    check(post(serve_url, "/v1/chat/completions", body))


def test_after_the_hostile_pass_the_breaker_is_closed(serve_url):
    print(f"\nhostile pass, responses by status and code: {dict(SEEN.most_common())}")
    assert breaker_state(serve_url) == 0.0
