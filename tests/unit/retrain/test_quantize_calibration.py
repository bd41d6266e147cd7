"""What a checkpoint quantizer calibrates on, and what is refused before it runs (pure
logic on a real SQLite store; no quantizer, no model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from demo import build_tokenizer
from feedback import EscalationEvent, EventMessage, SQLiteStore, holdout_bucket
from retrain import QuantizeConfig
from retrain._dataset import Pair
from retrain._quantize import check_quantizer
from retrain._quantize_calibration import calibration_sample, calibration_texts, round_robin
from retrain._quantize_job import group_size_for
from router._quantize import SCHEMES

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HOLDOUT = 0.1


def _event(
    i: int, route: str, *, kind: str = "sample", version: str = "v1", answer: str | None = "ok"
) -> EscalationEvent:
    return EscalationEvent(
        kind=kind,  # type: ignore[arg-type]
        request_id=f"{route}-{kind}-{version}-{i}",
        messages=(EventMessage(role="user", content=f"{route} question {i}"),),
        student_answer=answer,
        teacher_answer="teacher says" if kind == "escalation" else None,
        student_version=version,
        skill=route,
    )


def _in_train(event: EscalationEvent) -> bool:
    return holdout_bucket(event.request_id) >= HOLDOUT * 10000


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SQLiteStore(tmp_path / "f.db")
    yield s
    s.close()


def _pairs(route: str, n: int) -> list[Pair]:
    return [Pair(f"{route} {i}", "a", route) for i in range(n)]


def test_round_robin_takes_every_route_in_turn_and_a_stable_order():
    pairs = _pairs("busy", 50) + _pairs("rare", 3)
    picked = round_robin(pairs, 10)
    assert len(picked) == 10
    assert sum(p.skill == "rare" for p in picked) == 3  # not crowded out by the busy route
    assert [p.key for p in round_robin(list(reversed(pairs)), 10)] == [p.key for p in picked]
    assert len(round_robin(pairs, 100)) == 53


def test_the_parents_own_answered_prompts_from_the_training_split_come_first(store, tmp_path):
    events = [_event(i, r) for i in range(40) for r in ("a", "b")]
    events += [_event(i, "a", kind="escalation") for i in range(200, 210)]
    events += [_event(i, "a", version="v0") for i in range(300, 310)]  # an older student's
    events += [_event(i, "b", answer="  ") for i in range(100, 110)]  # nothing answered
    store.insert(events)
    config = QuantizeConfig(calibration_samples=60, min_store_samples=8)
    sample = calibration_sample(config, "v1", tmp_path, store, holdout_fraction=HOLDOUT)
    assert len(sample.pairs) == 60 and "served prompts from the feedback store" in sample.description
    keys = {p.key for p in sample.pairs}
    usable = [e for e in events if e.student_version == "v1" and (e.student_answer or "").strip()]
    held_out = [e for e in usable if not _in_train(e)]
    assert held_out, "the fixture should put some requests in the gate's split"
    assert not keys & {json.dumps([["user", e.messages[0].content]]) for e in held_out}  # type: ignore[index]
    assert {p.skill for p in sample.pairs} == {"a", "b"}
    assert all(p.completion == "ok" for p in sample.pairs)  # the student's own answer


def test_older_answers_fill_in_and_the_parents_files_below_the_minimum(store, tmp_path):
    store.insert([_event(i, "a", version="v0") for i in range(6)])
    (tmp_path / "train_reference.jsonl").write_text(
        "".join(json.dumps({"prompt": f"ref {i}", "completion": "r"}) + "\n" for i in range(20))
    )
    config = QuantizeConfig(calibration_samples=16, min_store_samples=8)
    sample = calibration_sample(config, "v1", tmp_path, store, holdout_fraction=HOLDOUT)
    from_store = sum(_in_train(_event(i, "a", version="v0")) for i in range(6))
    assert len(sample.pairs) == 16
    assert f"{from_store} served prompts from the feedback store (fewer than 8)" in sample.description
    assert f"and {16 - from_store} from the parent's training reference" in sample.description


def test_a_calibration_file_replaces_the_store_and_a_missing_one_is_refused(store, tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p {i}", "completion": "c"}) + "\n" for i in range(5)))
    sample = calibration_sample(QuantizeConfig(calibration_file=path), "v1", tmp_path, store)
    assert len(sample.pairs) == 5 and "calib.jsonl" in sample.description
    with pytest.raises(ConfigError, match="does not exist"):
        calibration_sample(QuantizeConfig(calibration_file=tmp_path / "nope.jsonl"), "v1", tmp_path, store)


def test_a_sample_is_rendered_as_served_then_answered():
    tok = build_tokenizer()
    tok.chat_template = CHATML
    chat = Pair("hi", "hello", "a", messages=(("system", "be brief"), ("user", "hi")))
    (text,) = calibration_texts(tok, [chat], None)
    assert text == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        f"hello{tok.eos_token or ''}"
    )
    (plain,) = calibration_texts(tok, [Pair("2+2=", "4")], None)
    assert plain.startswith("2+2=4")


def test_a_checkpoint_scheme_needs_its_quantizer_environment_and_a_device_it_serves_on(tmp_path):
    missing = QuantizeConfig(python=tmp_path / "none" / "python")
    with pytest.raises(ConfigError, match="make setup-quantizer"):
        check_quantizer(SCHEMES["w8a8"], missing, device="cpu")
    python = tmp_path / "python"
    python.write_text("")
    check_quantizer(SCHEMES["w4a16"], QuantizeConfig(python=python), device="cpu")
    with pytest.raises(ConfigError, match="not on this machine's cpu"):
        check_quantizer(SCHEMES["fp8"], QuantizeConfig(python=python), device="cpu")


def test_the_int4_group_divides_every_layer_width():
    assert group_size_for([128, 256], 128) == 128
    assert group_size_for([576, 1536], 128) == 64  # SmolLM2's hidden size is 4.5 groups of 128
    assert group_size_for([96], 128) == 32
    with pytest.raises(ValueError, match="no group size"):
        group_size_for([100], 128)


def test_the_loop_accepts_the_checkpoint_schemes_after_promotion_and_refuses_unknown_ones_at_start():
    from pydantic import ValidationError

    from retrain import LoopConfig

    assert LoopConfig(quantize_after_promotion="w8a8").quantize_after_promotion == "w8a8"
    assert LoopConfig(quantize_after_promotion="w4a16").quantize_after_promotion == "w4a16"
    assert LoopConfig(quantize_after_promotion="off").quantize_after_promotion is None
    with pytest.raises(ValidationError, match="must be one of"):
        LoopConfig(quantize_after_promotion="int3")
