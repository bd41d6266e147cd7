"""Backend selection (``auto`` and forced kinds) and closing a replaced backend only once
it has drained, with small fakes for the environment and the engines (pure logic)."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from router import BackendConfig, Generation, GenerationRequest
from router._factory import BACKEND_REASONS, choose_backend
from router._slots import BackendSlots, Slot


def _model_dir(tmp_path: Path, arch: str = "LlamaForCausalLM") -> Path:
    (tmp_path / "config.json").write_text(f'{{"architectures": ["{arch}"]}}')
    return tmp_path


def test_forced_kinds_are_configured(tmp_path):
    for kind in ("transformers", "vllm"):
        choice = choose_backend(BackendConfig(kind=kind), _model_dir(tmp_path))
        assert (choice.kind, choice.reason) == (kind, "configured")


def test_auto_falls_back_when_vllm_is_not_installed(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    choice = choose_backend(BackendConfig(kind="auto"), _model_dir(tmp_path))
    assert (choice.kind, choice.reason) == ("transformers", "vllm_not_installed")


def test_auto_falls_back_when_vllm_does_not_import(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    choice = choose_backend(BackendConfig(kind="auto"), _model_dir(tmp_path))
    assert (choice.kind, choice.reason) == ("transformers", "vllm_import_failed")
    assert choice.reason in BACKEND_REASONS


class SlowBackend:
    """Answers after ``release`` is set; records when it was closed."""

    continuous_batching = True
    max_context = 64

    def __init__(self, version: str) -> None:
        self.model_id, self.version = "student", version
        self.release = asyncio.Event()
        self.closed = False
        self.answered_while_closed = False

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return 1

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        await self.release.wait()
        self.answered_while_closed = self.closed
        return [
            Generation(
                text="x",
                tokens=["x"],
                token_logprobs=[0.0],
                finish_reason="stop",
                prompt_tokens=1,
                completion_tokens=1,
                model_id=self.model_id,
                model_version=self.version,
            )
            for _ in requests
        ]

    async def close(self) -> None:
        self.closed = True


@pytest.mark.asyncio
async def test_a_replaced_backend_closes_only_after_its_in_flight_requests_finish(tmp_path):
    old, new = SlowBackend("v1"), SlowBackend("v2")
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    loaded = {v2: new}
    slots = BackendSlots(Slot(old, v1, None), lambda d: loaded[d], tier="student")

    pending = asyncio.create_task(slots.generate(slots.current, [GenerationRequest(prompt="p")]))
    await asyncio.sleep(0.01)
    new.release.set()  # v2 answers its warm-up request
    await slots.apply(v2, None, 0.0, None)  # the swap: v2 serves from here on
    assert slots.current.backend is new and slots.loads == 2
    await asyncio.sleep(0.05)
    assert not old.closed  # one request still running on it
    old.release.set()
    (gen,) = await pending
    await asyncio.wait_for(slots.drained(), 5)
    assert gen.model_version == "v1" and not old.answered_while_closed
    assert old.closed and slots.retired == ["v1"] and not new.closed


@pytest.mark.asyncio
async def test_promoting_the_canary_reuses_its_engine_and_closes_the_old_one(tmp_path):
    old, cand = SlowBackend("v1"), SlowBackend("v2")
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    loads: list[Path] = []

    def load(d: Path) -> SlowBackend:
        loads.append(d)
        return cand

    slots = BackendSlots(Slot(old, v1, None), load, tier="student", rng=random.Random(0))
    cand.release.set()
    await slots.apply(v1, v2, 1.0, None)  # canary at 100%
    assert slots.pick() == (slots.canary, True) and loads == [v2]
    await slots.apply(v2, None, 0.0, 0.4)  # promote it, pin a threshold
    await asyncio.wait_for(slots.drained(), 5)
    assert loads == [v2], "the promoted canary must not be loaded a second time"
    assert slots.current.backend is cand and slots.canary is None and slots.canary_share == 0.0
    assert old.closed and not cand.closed and slots.retired == ["v1"]
    (gen,) = await slots.generate(slots.current, [GenerationRequest(prompt="p")])
    assert gen.threshold_override == 0.4 and gen.model_version == "v2"
