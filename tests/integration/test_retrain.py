"""Re-distillation on real teacher answers from a real store, through TRL, into the gate."""

from __future__ import annotations

import asyncio
import random
import shutil

import pytest
import torch

from demo import sample_examples
from distillery._workloads import demo_regression_suite
from feedback import EscalationEvent, SQLiteStore
from retrain import (
    DistillConfig,
    GateConfig,
    NotEnoughFeedback,
    build_dataset,
    distill,
    load_reference,
    run_gate,
)
from router import GenerationRequest
from router._transformers_backend import TransformersBackend

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(demo_models, tmp_path_factory):
    """Escalations as the gateway records them: the real teacher's answers to the skills
    the student lacks (plus one duplicate prompt and one unusable row)."""
    teacher = TransformersBackend(demo_models / "teacher", num_threads=2)
    examples = sample_examples(["shift", "double"], 2000, random.Random(11))
    gens = []
    for i in range(0, len(examples), 200):
        reqs = [GenerationRequest(prompt=e.prompt, max_tokens=24) for e in examples[i : i + 200]]
        gens += asyncio.run(teacher.generate(reqs))
    events = [
        EscalationEvent(
            request_id=f"esc-{i}",
            created_at=1000.0 + i,
            prompt=e.prompt,
            student_answer="x",
            teacher_answer=g.text,
            skill=e.skill,
        )
        for i, (e, g) in enumerate(zip(examples, gens, strict=True))
    ]
    events.append(
        EscalationEvent(
            request_id="dup",
            created_at=5000.0,
            prompt=examples[0].prompt,
            teacher_answer=gens[0].text,
            skill=examples[0].skill,
        )
    )
    events.append(
        EscalationEvent(request_id="empty", prompt="shift: abc =", teacher_answer=" ", skill="shift")
    )
    s = SQLiteStore(tmp_path_factory.mktemp("store") / "f.db")
    s.insert(events)
    return s


def test_dataset_is_deduplicated_split_and_mixed_with_replay(store, demo_models):
    ds = build_dataset(store, load_reference(demo_models / "student"), DistillConfig(min_new_examples=100))
    train_prompts = {p.prompt for p in ds.train}
    assert not train_prompts & {p.prompt for p in ds.holdout}
    assert 120 <= len(ds.holdout) <= 280  # ~10% of 2,000
    assert ds.dropped >= 1  # the unusable row
    assert ds.replay_examples == ds.new_examples  # replay_share 0.5
    assert {"shift", "double", "upper", "reverse"} <= set(ds.by_skill)
    new = [p for p in ds.train if p.source == "teacher"]
    assert len(new) == len({p.prompt for p in new})
    with pytest.raises(NotEnoughFeedback):
        build_dataset(store, [], DistillConfig(min_new_examples=10_000))


def test_retrained_student_learns_new_skills_and_passes_the_gate(store, demo_models, tmp_path):
    student = demo_models / "student"
    ds = build_dataset(store, load_reference(student), DistillConfig(min_new_examples=100))
    cand = tmp_path / "candidate"
    result = distill(student, ds, cand, DistillConfig())
    # the demo student's manifest says how a from-scratch toy trains (600 steps, LR 1e-3)
    assert result.steps == DistillConfig().resolved(student).steps == 600
    assert (cand / "model.safetensors").is_file()
    assert (cand / "training_report.json").is_file() and not (tmp_path / "candidate.partial").exists()
    report = run_gate(student, cand, ds.holdout, demo_regression_suite(50), GateConfig())
    print(
        f"\ngate: {report.to_dict()['reasons']}\n candidate {report.candidate.per_skill} "
        f"holdout {report.candidate.holdout_agreement}\n current {report.current.per_skill} "
        f"holdout {report.current.holdout_agreement} ({result.seconds}s training)"
    )
    assert report.passed, report.reasons
    assert report.candidate.per_skill["shift"] >= 0.9 and report.candidate.per_skill["double"] >= 0.9
    assert report.candidate.per_skill["upper"] >= 0.95 and report.candidate.per_skill["reverse"] >= 0.95
    assert report.candidate.holdout_agreement > report.current.holdout_agreement + 0.5
    assert report.candidate.escalation_rate < report.current.escalation_rate


def test_gate_refuses_a_worse_candidate(store, demo_models, tmp_path):
    """A candidate whose weights are damaged (as a bad training run would leave them)."""
    from transformers import AutoModelForCausalLM

    student = demo_models / "student"
    bad = tmp_path / "bad"
    shutil.copytree(student, bad)
    model = AutoModelForCausalLM.from_pretrained(str(bad), dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(bad))
    ds = build_dataset(store, load_reference(student), DistillConfig(min_new_examples=100))
    report = run_gate(student, bad, ds.holdout, demo_regression_suite(50), GateConfig())
    assert not report.passed
    # the damaged candidate serves its mastered routes worse (more escalations, or more wrong answers)
    assert any(r.startswith("route ") and " more: " in r for r in report.reasons), report.reasons


def test_logit_distillation_runs_through_trl_with_the_local_teacher(store, demo_models, tmp_path):
    """On-policy logit KD (TRL DistillationTrainer, generalised JSD) on a short budget:
    it trains and saves a loadable candidate whose weights moved."""
    from safetensors.torch import load_file

    student = demo_models / "student"
    ds = build_dataset(store, load_reference(student), DistillConfig(min_new_examples=100, max_examples=400))
    cfg = DistillConfig(method="logit_kd", steps=10, batch_size=16)
    with pytest.raises(ValueError, match="teacher"):
        distill(student, ds, tmp_path / "no-teacher", cfg)
    result = distill(student, ds, tmp_path / "kd", cfg, teacher_dir=demo_models / "teacher")
    assert result.steps == 10
    before = load_file(str(student / "model.safetensors"))
    after = load_file(str(tmp_path / "kd" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    report = run_gate(student, tmp_path / "kd", ds.holdout[:20], demo_regression_suite(10), GateConfig())
    # Evaluated end to end by the same gate (no verdict expected after 10 steps).
    assert set(report.candidate.per_skill) == {"upper", "reverse", "shift", "double"}


def test_blended_ce_and_kd_distillation_learns_the_new_skills(store, demo_models, tmp_path):
    """alpha x CE on the labels + (1 - alpha) x KL to the local teacher's token distributions."""
    student = demo_models / "student"
    ds = build_dataset(store, load_reference(student), DistillConfig(min_new_examples=100))
    cfg = DistillConfig(method="sft_kd", kd_alpha=0.5, steps=150)
    with pytest.raises(ValueError, match="teacher"):
        distill(student, ds, tmp_path / "no-teacher", cfg)
    result = distill(student, ds, tmp_path / "blend", cfg, teacher_dir=demo_models / "teacher")
    report = run_gate(student, tmp_path / "blend", ds.holdout, demo_regression_suite(50), GateConfig())
    print(f"\nblend: {report.candidate.per_skill} in {result.seconds}s; gate {report.reasons}")
    assert result.steps == 150
    assert report.candidate.holdout_agreement > report.current.holdout_agreement + 0.3
