"""Which answer teaches: corrections > confirmed teacher answers > plain ones; rejections counted.

On a real SQLite store (the store is cheap; it is the contract the dataset reads).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any

import pytest

from feedback import EscalationEvent, SQLiteStore
from retrain import DistillConfig, build_dataset
from retrain._labels import VerifierConfig, build_verifiers

CFG = DistillConfig(min_new_examples=1, holdout_fraction=0.01, replay_share=0.0)


def _escalation(
    rid: str,
    prompt: str,
    answer: str,
    t: float,
    skill: str = "orders",
    kind: str = "escalation",
    finish: str | None = None,
):
    return EscalationEvent(
        kind=kind,  # type: ignore[arg-type]
        request_id=rid,
        created_at=t,
        prompt=prompt,
        student_answer="?",
        teacher_answer=answer,
        teacher_finish_reason=finish,  # type: ignore[arg-type]
        skill=skill,
    )


def _rating(rid: str, prompt: str, rating: float, tier: str, t: float, correction: str | None = None):
    return EscalationEvent(
        kind="feedback",
        request_id=rid,
        created_at=t,
        prompt=prompt,
        tier=tier,  # type: ignore[arg-type]
        rating=rating,
        correction=correction,
        skill="orders",
    )


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "f.db")
    yield s
    s.close()


def _train(store, **kw: Any) -> tuple[dict[str, tuple[str, str]], Any]:
    ds = build_dataset(store, [], CFG, **kw)
    pairs = {p.prompt: (p.completion, p.source) for p in ds.train + ds.holdout}
    return pairs, ds


def _ids_in_train(n: int) -> list[str]:
    """Request ids the store's stable split puts in training at holdout_fraction 0.01."""
    from feedback._store import holdout_bucket

    out, i = [], 0
    while len(out) < n:
        rid = f"req-{i}"
        if holdout_bucket(rid) >= 100:
            out.append(rid)
        i += 1
    return out


def test_a_correction_beats_a_confirmed_teacher_answer_which_beats_a_plain_one(store):
    a, b, c, d = _ids_in_train(4)
    store.insert(
        [
            # "p1": escalated twice; the application corrected the later answer.
            _escalation(a, "p1", "teacher says 1", 10.0),
            _escalation(b, "p1", "teacher says 1 again", 11.0),
            _rating(b, "p1", 0.0, "teacher", 12.0, correction="the right 1"),
            # "p2": a plain later answer does not beat an earlier one the app rated good.
            _escalation(c, "p2", "teacher says 2, rated good", 10.0),
            _rating(c, "p2", 1.0, "teacher", 11.0),
            _escalation(d, "p2", "teacher says 2 later", 13.0),
        ]
    )
    pairs, ds = _train(store)
    assert pairs["p1"] == ("the right 1", "correction")
    assert pairs["p2"] == ("teacher says 2, rated good", "teacher_agreed")
    assert ds.by_source == {"correction": 1, "teacher_agreed": 1}
    assert ds.rejected == {"rated_bad": 1}  # p1's corrected answer, dropped as a teacher label


def test_a_teacher_answer_rated_bad_never_teaches(store):
    a, b = _ids_in_train(2)
    store.insert(
        [
            _escalation(a, "p1", "wrong", 10.0),
            _rating(a, "p1", 0.2, "teacher", 11.0),
            _escalation(b, "p2", "fine", 10.0),
            # A bad rating of the *student's* answer says nothing about a teacher label.
            _rating(b, "p2", 0.0, "student", 11.0),
        ]
    )
    pairs, ds = _train(store)
    assert "p1" not in pairs and pairs["p2"] == ("fine", "teacher")
    assert ds.rejected == {"rated_bad": 1} and ds.dropped == 1


def test_audit_labels_teach_like_escalations(store):
    (a,) = _ids_in_train(1)
    store.insert([_escalation(f"{a}:audit", "p1", "the teacher's answer", 10.0, kind="audit")])
    pairs, ds = _train(store)
    assert pairs["p1"] == ("the teacher's answer", "audit") and ds.by_source == {"audit": 1}


def _checker_module() -> str:
    module = types.ModuleType("distillery_test_checkers")

    def no_shouting(answer: str, prompt: str) -> bool:
        return answer != answer.upper()

    module.no_shouting = no_shouting  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    return module.__name__


def test_verifiers_reject_teacher_answers_by_reason_and_route(store):
    ids = _ids_in_train(6)
    store.insert(
        [
            _escalation(ids[0], "j1", '{"order": 5249}', 10.0, skill="json"),
            _escalation(ids[1], "j2", '{"order": "five"}', 10.0, skill="json"),  # schema: not an int
            _escalation(ids[2], "j3", "not json at all", 10.0, skill="json"),
            _escalation(ids[3], "o1", "Order 5249", 10.0, skill="orders"),
            _escalation(ids[4], "o2", "no number here", 10.0, skill="orders"),  # regex
            _escalation(ids[5], "o3", "ORDER 1234", 10.0, skill="orders"),  # entry point
        ]
    )
    module = _checker_module()
    verifiers = build_verifiers(
        [
            VerifierConfig(
                name="order-json",
                kind="json_schema",
                json_schema={
                    "type": "object",
                    "properties": {"order": {"type": "integer"}},
                    "required": ["order"],
                },
                routes=["json"],
            ),
            VerifierConfig(name="has-number", kind="regex", pattern=r".*\d{4}.*", routes=["orders"]),
            VerifierConfig(name="calm", kind="python", entry_point=f"{module}:no_shouting"),
        ]
    )
    pairs, ds = _train(store, verifiers=verifiers)
    assert set(pairs) == {"j1", "o1"}
    assert ds.rejected == {"verifier:order-json": 2, "verifier:has-number": 1, "verifier:calm": 1}


def test_verifiers_come_from_the_config_and_bad_ones_are_refused_at_load(store):
    (a,) = _ids_in_train(1)
    store.insert([_escalation(a, "p1", "abc", 10.0)])
    config = CFG.model_copy(
        update={"verifiers": [VerifierConfig(name="digits", kind="regex", pattern=r"\d+")]}
    )
    with pytest.raises(Exception, match="usable"):
        build_dataset(store, [], config)  # the only label rejected: nothing to train on
    with pytest.raises(ValueError, match="needs pattern"):
        VerifierConfig(name="x", kind="regex")
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        VerifierConfig(name="x", kind="json_schema", json_schema={"type": "no-such-type"})


def test_a_second_teacher_keeps_only_labels_both_agree_on(store):
    ids = _ids_in_train(3)
    store.insert(
        [
            _escalation(ids[0], "p1", "same", 10.0),
            _escalation(ids[1], "p2", "first teacher only", 10.0),
            _escalation(ids[2], "p3", "rated good", 10.0),
            _rating(ids[2], "p3", 1.0, "teacher", 11.0),
        ]
    )
    asked: list[str] = []

    def second(pairs: Sequence[Any]) -> list[str]:
        asked.extend(p.prompt for p in pairs)
        return ["same" if p.prompt == "p1" else "something else" for p in pairs]

    pairs, ds = _train(store, second_teacher=second)
    assert pairs == {"p1": ("same", "teacher_agreed"), "p3": ("rated good", "teacher_agreed")}
    assert sorted(asked) == ["p1", "p2"]  # an answer the application confirmed is not re-asked
    assert ds.rejected == {"second_teacher_disagreed": 1}
    assert ds.by_source == {"teacher_agreed": 2}


def test_a_teacher_answer_cut_off_by_the_token_limit_is_never_taught_or_judged_by(store, tmp_path):
    """The real teacher rambles on some prompts ("El Turco, el Turco, ..." until the limit):
    served, but a label that never stops teaches the student not to stop."""
    from retrain import GateConfig, build_suite

    spain, japan, peru = (f"What is the capital of {c}?" for c in ("Spain", "Japan", "Peru"))
    cut = _escalation("cut", spain, "El Turco, el Turco, el Turco,", 1.0, "capital", finish="length")
    whole = _escalation("whole", japan, "The capital of Japan is Tokyo.", 2.0, "capital", finish="stop")
    legacy = _escalation("legacy", peru, "The capital of Peru is Lima.", 3.0, "capital")
    store.insert([cut, whole, legacy])
    pairs, ds = _train(store)
    assert set(pairs) == {japan, peru}
    assert ds.rejected == {"teacher_cut_off": 1}
    assert cut.teacher_label() is None and whole.teacher_label() == "The capital of Japan is Tokyo."
    # the gate's suite takes held-out events: every event here, at a holdout share of 1
    suite = build_suite(GateConfig(suite_per_route=10), tmp_path, store, holdout_fraction=1.0)
    assert {p.prompt for p in suite} == {japan, peru}
