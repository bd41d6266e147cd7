"""API keys, scopes, admin API and admission limits on a real Serve app (``secure_stack``).

Counts are asserted exactly: every request of a class gets the one status its key allows,
with an OpenAI-style JSON error body, and nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo import format_prompt

pytestmark = pytest.mark.integration

COMPLETION = {"model": "distillery", "prompt": format_prompt("reverse", "hello"), "max_tokens": 16}
CHAT = {"model": "distillery", "messages": [{"role": "user", "content": "upper: abc ="}], "max_tokens": 16}
INFERENCE = [
    ("POST", "/v1/completions", COMPLETION),
    ("POST", "/v1/chat/completions", CHAT),
    ("GET", "/v1/models", None),
]
ADMIN = [("GET", "/admin/models", None), ("PUT", "/admin/threshold", {"threshold": None})]
PUBLIC = [("GET", "/healthz", None), ("GET", "/metrics", None)]


def _call(stack: Any, key: str | None, method: str, path: str, body: Any) -> httpx.Response:
    return httpx.request(method, f"{stack.url}{path}", json=body, headers=stack.headers(key), timeout=60)


def _assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["message"]


def test_every_endpoint_class_with_every_kind_of_key(secure_stack: Any) -> None:
    outcomes: Counter[tuple[str, str, int]] = Counter()
    for key in (None, "dk-not-a-real-key", "app", "ops", "both"):
        label = key if key in secure_stack.keys else ("none" if key is None else "wrong")
        for klass, endpoints in (("inference", INFERENCE), ("admin", ADMIN), ("public", PUBLIC)):
            for method, path, body in endpoints:
                resp = _call(secure_stack, key, method, path, body)
                outcomes[(label, klass, resp.status_code)] += 1
                if resp.status_code == 401:
                    _assert_error(resp, 401, "invalid_api_key")
                    assert resp.headers["www-authenticate"] == "Bearer"
                elif resp.status_code == 403:
                    _assert_error(resp, 403, "insufficient_scope")
    assert outcomes == Counter(
        {
            ("none", "inference", 401): 3,
            ("none", "admin", 401): 2,
            ("none", "public", 200): 2,
            ("wrong", "inference", 401): 3,
            ("wrong", "admin", 401): 2,
            ("wrong", "public", 200): 2,
            ("app", "inference", 200): 3,
            ("app", "admin", 403): 2,
            ("app", "public", 200): 2,
            ("ops", "inference", 403): 3,
            ("ops", "admin", 200): 2,
            ("ops", "public", 200): 2,
            ("both", "inference", 200): 3,
            ("both", "admin", 200): 2,
            ("both", "public", 200): 2,
        }
    )
    assert httpx.get(f"{secure_stack.url}/healthz", timeout=30).json()["auth"] == "enabled"


def _wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError("condition not reached in time")


def _served_version(stack: Any) -> str:
    return str(httpx.get(f"{stack.url}/healthz", timeout=30).json()["student"])


def test_admin_api_changes_what_serves_and_audits_the_key_name(secure_stack: Any) -> None:
    admin = secure_stack.headers("ops")
    url = secure_stack.url
    state = httpx.get(f"{url}/admin/models", headers=admin, timeout=30).json()
    first = state["current"]
    assert {v["version"] for v in state["versions"]} == {first, "student-copy"}

    resp = httpx.post(f"{url}/admin/promote", json={"version": "student-copy"}, headers=admin, timeout=30)
    assert resp.status_code == 200 and resp.json()["current"] == "student-copy"
    _wait_for(lambda: _served_version(secure_stack) == "student-copy")

    # A threshold of 1.0 sends everything to the teacher; clearing it restores the student.
    assert httpx.put(f"{url}/admin/threshold", json={"threshold": 1.0}, headers=admin, timeout=30).is_success
    _wait_for(lambda: _call(secure_stack, "app", *INFERENCE[0]).json()["distillery"][0]["tier"] == "teacher")
    assert httpx.put(f"{url}/admin/threshold", json={"threshold": None}, headers=admin, timeout=30).is_success
    _wait_for(lambda: _call(secure_stack, "app", *INFERENCE[0]).json()["distillery"][0]["tier"] == "student")

    canary = httpx.post(
        f"{url}/admin/canary", json={"version": first, "share": 0.5}, headers=admin, timeout=30
    ).json()
    assert canary["canary"] == first and canary["canary_share"] == 0.5
    assert httpx.delete(f"{url}/admin/canary", headers=admin, timeout=30).json()["canary"] is None

    back = httpx.post(f"{url}/admin/rollback", json={}, headers=admin, timeout=30)
    assert back.status_code == 200 and back.json()["current"] == first
    _wait_for(lambda: _served_version(secure_stack) == first)

    retrain = httpx.post(f"{url}/admin/retrain", json={"reason": "test"}, headers=admin, timeout=30)
    assert retrain.status_code == 202 and retrain.json()["actor"] == "ops"
    assert secure_stack.registry.take_refresh_request()["reason"] == "test"

    _assert_error(
        httpx.post(f"{url}/admin/promote", json={"version": "nope"}, headers=admin, timeout=30),
        404,
        "version_not_found",
    )
    _assert_error(
        httpx.post(f"{url}/admin/canary", json={"version": first, "share": 2}, headers=admin, timeout=30),
        400,
        "invalid_request",
    )
    actors = {a.get("actor") for a in secure_stack.registry.audit() if a["action"] != "register"}
    assert "ops" in actors and not any(k in str(actors) for k in secure_stack.keys.values())


def test_keys_never_appear_in_logs_metrics_or_feedback(secure_stack: Any, live_stack: Any) -> None:
    for key in ("app", "both", "ops"):
        _call(secure_stack, key, "POST", "/v1/completions", {**COMPLETION, "prompt": "shift: abc ="})
    metrics = httpx.get(f"{secure_stack.url}/metrics", timeout=30).text
    time.sleep(3)  # let escalation events reach the store
    rows = "".join(e.model_dump_json() for e in live_stack.store.events())
    assert "shift: abc =" in rows  # the escalations above were recorded, and are what we scan
    logs = "".join(
        p.read_text(errors="replace")
        for root in (Path(secure_stack.settings.var_dir), Path(live_stack.settings.var_dir))
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".log", ".out", ".err", ".jsonl", ".json") and p.stat().st_size < 50e6
    )
    assert logs, "found no logs to scan"
    for key in secure_stack.keys.values():
        assert key not in metrics
        assert key not in rows
        assert key not in logs


def test_body_size_limits_are_413_with_json(secure_stack: Any) -> None:
    big = {**COMPLETION, "prompt": "x" * 5000}
    _assert_error(_call(secure_stack, "app", "POST", "/v1/completions", big), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "distillery", "prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    resp = httpx.post(
        f"{secure_stack.url}/v1/completions",
        content=chunks(),
        headers={**secure_stack.headers("app"), "Content-Type": "application/json"},
        timeout=60,
    )
    _assert_error(resp, 413, "request_too_large")
    ok = _call(secure_stack, "app", "POST", "/v1/completions", COMPLETION)
    assert ok.status_code == 200


def test_request_limits_are_400_with_json(secure_stack: Any) -> None:
    for body, param in (
        ({**COMPLETION, "max_tokens": 100_000}, "max_tokens"),
        ({**COMPLETION, "n": 99}, "n"),
    ):
        resp = _call(secure_stack, "app", "POST", "/v1/completions", body)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param
    long_prompt = {**COMPLETION, "prompt": "reverse: " + "a" * 2000 + " ="}
    _assert_error(
        _call(secure_stack, "app", "POST", "/v1/completions", long_prompt), 400, "context_length_exceeded"
    )


async def _burst(stack: Any, key: str, n: int, prompt: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as client:
        body = {**COMPLETION, "prompt": prompt}
        return await asyncio.gather(
            *(
                client.post(f"{stack.url}/v1/completions", json=body, headers=stack.headers(key))
                for _ in range(n)
            )
        )


def test_per_key_concurrency_gets_429_with_retry_after(secure_stack: Any) -> None:
    responses = asyncio.run(_burst(secure_stack, "tiny", 12, "shift: hello ="))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and statuses[429] > 0 and statuses[200] >= 2, statuses
    limited = next(r for r in responses if r.status_code == 429)
    _assert_error(limited, 429, "rate_limited")
    assert limited.headers["retry-after"] == "1"


def test_overload_sheds_503_and_accepted_requests_complete(secure_stack: Any) -> None:
    responses = asyncio.run(_burst(secure_stack, "app", 40, "double: hello ="))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and statuses[503] > 0 and statuses[200] >= 6, statuses
    shed = next(r for r in responses if r.status_code == 503)
    _assert_error(shed, 503, "overloaded")
    assert shed.headers["retry-after"] == "1"
    assert all(r.json()["choices"][0]["text"] == "hheelllloo" for r in responses if r.status_code == 200)
    metrics = httpx.get(f"{secure_stack.url}/metrics", timeout=30).text
    assert 'distillery_rejected_requests_total{reason="overloaded"}' in metrics
    assert "distillery_in_flight_requests 0.0" in metrics
