"""The OpenAI-compatible teacher streamed upstream: what goes out, what comes back."""

import json

import httpx
import pytest

from router import ChatTurn, Generation, GenerationRequest, OpenAIHTTPBackend, ResponseFormat, TokenDelta
from router.errors import TeacherHTTPError, TeacherUnavailable

CHAT = GenerationRequest(messages=(ChatTurn(role="user", content="order number?"),), max_tokens=12)


def _sse(*events) -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()


def _backend(handler):
    return OpenAIHTTPBackend("http://teacher.test", "big", transport=httpx.MockTransport(handler))


def _delta(text, lp=-0.1, finish=None):
    return {
        "model": "big-v7",
        "choices": [
            {
                "index": 0,
                "delta": {"content": text},
                "logprobs": {"content": [{"token": text, "logprob": lp}]},
                "finish_reason": finish,
            }
        ],
    }


async def _all(backend, req):
    return [item async for item in backend.stream_generation(req)]


async def test_a_chat_answer_streams_piece_by_piece_then_whole():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = json.loads(request.content)
        usage = {"model": "big-v7", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
        body = _sse(
            _delta("The order"), _delta(" number is"), _delta(" 4818.", finish="stop"), usage, "[DONE]"
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    *deltas, whole = await _all(_backend(handler), CHAT)
    assert seen["body"]["stream"] is True and seen["body"]["stream_options"] == {"include_usage": True}
    assert [d.token for d in deltas] == ["The order", " number is", " 4818."]
    assert all(isinstance(d, TokenDelta) for d in deltas)
    assert isinstance(whole, Generation) and whole.text == "The order number is 4818."
    assert (whole.prompt_tokens, whole.completion_tokens, whole.model_version) == (9, 3, "big-v7")
    assert whole.finish_reason == "stop" and whole.token_logprobs == pytest.approx([-0.1] * 3)


async def test_a_completion_streams_its_text_pieces():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/completions"
        chunk = lambda t: {"choices": [{"text": t, "logprobs": {"tokens": [t], "token_logprobs": [-0.2]}}]}  # noqa: E731
        last = {"choices": [{"text": "", "finish_reason": "length"}]}
        return httpx.Response(200, content=_sse(chunk("cb"), chunk("a"), last, "[DONE]"))

    *deltas, whole = await _all(_backend(handler), GenerationRequest(prompt="reverse: abc =", max_tokens=2))
    assert (
        [d.token for d in deltas] == ["cb", "a"] and whole.text == "cba" and whole.finish_reason == "length"
    )


async def test_an_http_error_before_the_stream_is_the_teachers_http_error():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="overloaded")

    with pytest.raises(TeacherHTTPError) as caught:
        await _all(_backend(handler), CHAT)
    assert caught.value.status == 503


async def test_an_error_event_mid_stream_fails_after_the_pieces_already_sent():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_sse(_delta("The order"), {"error": {"message": "engine died"}}))

    got = []
    with pytest.raises(TeacherUnavailable, match="mid-answer"):
        async for item in _backend(handler).stream_generation(CHAT):
            got.append(item)
    assert [d.token for d in got] == ["The order"]


async def test_a_structured_request_answers_whole():
    def handler(request: httpx.Request) -> httpx.Response:
        assert "stream" not in json.loads(request.content)
        message = {"role": "assistant", "content": '{"n": "4818"}'}
        return httpx.Response(
            200, json={"model": "big", "choices": [{"message": message, "finish_reason": "stop"}]}
        )

    req = CHAT.model_copy(update={"response_format": ResponseFormat(type="json_object")})
    [whole] = await _all(_backend(handler), req)
    assert isinstance(whole, Generation) and whole.text == '{"n": "4818"}'
