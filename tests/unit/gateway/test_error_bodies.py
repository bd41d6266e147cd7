"""One error-body builder: messages written for the client, never the server's internals."""

import re

from gateway.errors import client_message, to_error_response
from router.errors import (
    EmptyPrompt,
    InvalidRequest,
    StudentUnavailable,
    TeacherCircuitOpen,
    TeacherTimeout,
    TeacherUnavailable,
)

RAY_TRACE = (
    "\x1b[36mray::ServeReplica:distillery:teacher.handle_request()\x1b[39m (pid=4242, ip=10.0.0.3, "
    "actor_id=8f1e2c, repr=<ray.serve._private.replica.ServeReplica object at 0x7f3a2b1c>)\n"
    'Traceback (most recent call last):\n  File "/work/main/.venv/lib/python3.11/site-packages/'
    'transformers/tokenization_utils.py", line 12, in encode\nTypeError: bad surrogate'
)
INTERNALS = re.compile(r"Traceback|\x1b|site-packages|pid=|actor_id|0x[0-9a-f]{6}|/work/")


class RemoteWrapper(TeacherUnavailable):
    """What Ray delivers: a subclass of the original whose text is the remote traceback."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(RAY_TRACE)
        self.cause = cause


def test_a_remote_failures_traceback_never_reaches_the_body():
    for exc in (
        TeacherUnavailable(f"teacher failed: TypeError: {RAY_TRACE}"),
        RemoteWrapper(TeacherUnavailable(RAY_TRACE)),
        StudentUnavailable(f"the student failed: {RAY_TRACE}"),
        RuntimeError(RAY_TRACE),
    ):
        status, body = to_error_response(exc)
        assert status >= 500
        assert not INTERNALS.search(body.error.message), body.error.message
        assert "x-request-id" in body.error.message  # where the operator finds the detail


def test_client_errors_keep_the_message_distillery_wrote():
    status, body = to_error_response(EmptyPrompt("the prompt is empty"))
    assert (status, body.error.message, body.error.code) == (400, "the prompt is empty", "empty_prompt")
    status, body = to_error_response(
        RemoteWrapper(InvalidRequest("the student model cannot tokenize this prompt"))
    )
    assert status == 400 and body.error.message == "the student model cannot tokenize this prompt"


def test_a_400_whose_text_carries_internals_gets_the_generic_message():
    status, body = to_error_response(InvalidRequest(RAY_TRACE))
    assert status == 400 and body.error.message == "the request cannot be processed by this model"


def test_timeouts_and_an_open_breaker_say_when_to_come_back():
    _, body = to_error_response(TeacherTimeout("teacher did not answer within 20s"))
    assert body.error.code == "teacher_timeout" and body.error.message.startswith(
        "teacher did not answer within 20s"
    )
    _, body = to_error_response(TeacherCircuitOpen("circuit breaker open; retry in 3.0s", retry_after_s=3))
    assert "retry in 3.0s" in body.error.message


def test_client_message_takes_the_first_clean_line():
    assert client_message("  max_tokens too large\nsecond line", "x") == "max_tokens too large"
    assert client_message("\x1b[31mred\x1b[0m", "x") == "red"
    assert client_message("", "fallback") == "fallback"
    assert client_message("see /usr/lib/python3/foo", "fallback") == "fallback"
