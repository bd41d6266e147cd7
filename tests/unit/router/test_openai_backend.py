import json

import httpx
import pytest

from router import ChatTurn, GenerationRequest, OpenAIHTTPBackend
from router.errors import TeacherTimeout, TeacherUnavailable


def _backend(handler):
    return OpenAIHTTPBackend(
        "http://teacher.test", "big", api_key="sk-x", transport=httpx.MockTransport(handler)
    )


async def test_completion_request_asks_for_logprobs_and_parses_them():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"] = request.url.path
        seen["body"] = json.loads(request.content)
        seen["auth"] = request.headers["authorization"]
        return httpx.Response(
            200,
            json={
                "model": "big-v7",
                "choices": [
                    {
                        "text": "cba",
                        "finish_reason": "stop",
                        "logprobs": {"tokens": ["c", "b", "a"], "token_logprobs": [-0.1, -0.2, -0.3]},
                    }
                ],
                "usage": {"prompt_tokens": 4, "completion_tokens": 3},
            },
        )

    [gen] = await _backend(handler).generate([GenerationRequest(prompt="reverse: abc =", max_tokens=5)])
    assert seen["path"] == "/v1/completions"
    assert seen["body"]["logprobs"] == 1 and seen["body"]["max_tokens"] == 5
    assert seen["auth"] == "Bearer sk-x"
    assert gen.text == "cba" and gen.token_logprobs == [-0.1, -0.2, -0.3]
    assert gen.model_version == "big-v7" and gen.prompt_tokens == 4


async def test_chat_request_uses_chat_endpoint():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        assert body["messages"] == [{"role": "user", "content": "hi"}] and body["logprobs"] is True
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "message": {"content": "yo"},
                        "finish_reason": "length",
                        "logprobs": {"content": [{"token": "yo", "logprob": -0.5}]},
                    }
                ],
            },
        )

    [gen] = await _backend(handler).generate(
        [GenerationRequest(messages=(ChatTurn(role="user", content="hi"),))]
    )
    assert gen.text == "yo" and gen.finish_reason == "length" and gen.token_logprobs == [-0.5]


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (lambda r: httpx.Response(500, text="boom"), TeacherUnavailable),
        (lambda r: httpx.Response(200, json={"choices": []}), TeacherUnavailable),
        (lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused")), TeacherUnavailable),
        (lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow")), TeacherTimeout),
    ],
)
async def test_failures_become_typed_errors(handler, error):
    with pytest.raises(error):
        await _backend(handler).generate([GenerationRequest(prompt="x")])
