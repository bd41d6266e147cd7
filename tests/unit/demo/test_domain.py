import random

import pytest

from demo import ALL_SKILLS, build_tokenizer, format_prompt, parse_prompt, sample_examples, solve


@pytest.mark.parametrize(
    ("skill", "word", "answer"),
    [("upper", "abc", "ABC"), ("reverse", "abc", "cba"), ("shift", "xyz", "yza"), ("double", "ab", "aabb")],
)
def test_skills_are_exact(skill, word, answer):
    assert solve(skill, word) == answer


def test_prompt_round_trip_and_rejects_foreign_text():
    assert parse_prompt(format_prompt("shift", "abc")) == ("shift", "abc")
    assert parse_prompt("what is the weather?") is None
    assert parse_prompt("shift: ABC =") is None


def test_sampling_is_seeded_and_balanced():
    a = sample_examples(["upper", "shift"], 10, random.Random(3))
    b = sample_examples(["upper", "shift"], 10, random.Random(3))
    assert a == b
    assert [e.skill for e in a].count("upper") == 5


def test_unknown_skill_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown demo skill"):
        sample_examples(["juggle"], 1, random.Random(0))


def test_tokenizer_is_char_level_with_one_token_skill_tags():
    tok = build_tokenizer()
    for skill in ALL_SKILLS:
        ids = tok.encode(format_prompt(skill.name, "abc"), add_special_tokens=False)
        assert len(ids) == 1 + 1 + 3 + 2  # tag, space, three letters, " ="
        assert tok.decode(ids) == format_prompt(skill.name, "abc")
    assert tok.unk_token_id in tok.encode("é", add_special_tokens=False)
