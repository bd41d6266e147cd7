"""``check_fits``: a chat request's left-out ``max_tokens`` fits each model's own context;
a budget the client set is never silently shortened."""

from dataclasses import dataclass

import pytest

from router import GenerationRequest
from router._context import check_fits
from router.errors import InvalidRequest, PromptTooLong


@dataclass
class _Model:
    """The two things ``check_fits`` asks of a backend."""

    prompt_tokens: int
    max_context: int

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        if request.prompt == "untokenizable":
            raise ValueError("no token for that")
        return self.prompt_tokens


def _left_out(limit: int = 256) -> GenerationRequest:
    return GenerationRequest(prompt="hi", max_tokens=limit, max_tokens_given=False)


def test_a_left_out_budget_shrinks_to_what_the_context_leaves() -> None:
    fitted = check_fits(_Model(prompt_tokens=1900, max_context=2048), _left_out(), "student")  # type: ignore[arg-type]
    assert fitted.max_tokens == 148
    assert fitted.prompt == "hi" and not fitted.max_tokens_given


def test_a_left_out_budget_that_fits_is_kept_and_each_tier_gets_its_own() -> None:
    request = _left_out()
    assert check_fits(_Model(10, 8192), request, "teacher") is request  # type: ignore[arg-type]
    assert check_fits(_Model(10, 200), request, "student").max_tokens == 190  # type: ignore[arg-type]


def test_a_budget_the_client_set_is_refused_not_shortened() -> None:
    request = GenerationRequest(prompt="hi", max_tokens=256)
    with pytest.raises(PromptTooLong, match="max_tokens asks for 256"):
        check_fits(_Model(prompt_tokens=1900, max_context=2048), request, "student")  # type: ignore[arg-type]


def test_a_prompt_that_fills_the_context_is_refused_without_naming_a_max_tokens_never_sent() -> None:
    with pytest.raises(PromptTooLong, match="leaves no room") as err:
        check_fits(_Model(prompt_tokens=2048, max_context=2048), _left_out(), "student")  # type: ignore[arg-type]
    assert "max_tokens" not in str(err.value)


def test_an_untokenizable_prompt_is_the_clients_error() -> None:
    request = GenerationRequest(prompt="untokenizable", max_tokens=8)
    with pytest.raises(InvalidRequest, match="cannot tokenize"):
        check_fits(_Model(1, 10), request, "student")  # type: ignore[arg-type]
