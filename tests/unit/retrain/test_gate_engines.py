"""The gate's models answer on one engine where the next one's weights load in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from retrain._gate import GateEngines
from router import Generation, GenerationRequest
from router._vllm_backend import same_weights_layout
from tests.fakes.clients import make_generation


class FakeBackend:
    """Answers with the name of the directory whose weights it holds."""

    def __init__(self, model_dir: Path, log: list[str], *, reloads: bool) -> None:
        self.model_dir, self.log = model_dir, log
        if reloads:
            self.reload_from = self._reload_from
        log.append(f"start {model_dir.name}")

    async def _reload_from(self, model_dir: Path) -> bool:
        if model_dir.name.startswith("other-layout"):
            return False
        self.log.append(f"reload {model_dir.name}")
        self.model_dir = model_dir
        return True

    async def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        name = self.model_dir.name
        return [make_generation(name, version=name) for _ in requests]

    async def close(self) -> None:
        self.log.append(f"close {self.model_dir.name}")


def engines(log: list[str], *, reloads: bool) -> GateEngines:
    return GateEngines(lambda path: FakeBackend(path, log, reloads=reloads))


REQUESTS = [GenerationRequest(prompt="q", max_new_tokens=4)]


def test_a_candidate_answers_on_its_parents_engine_when_its_weights_load_in_place() -> None:
    log: list[str] = []
    with engines(log, reloads=True) as gate:
        current = gate.answers(Path("current"), REQUESTS, 8)
        candidate = gate.answers(Path("candidate"), REQUESTS, 8)
    assert [g.text for g in current + candidate] == ["current", "candidate"]
    assert log == ["start current", "reload candidate", "close candidate"]


def test_a_model_the_engine_cannot_load_gets_an_engine_of_its_own_and_the_old_one_is_closed() -> None:
    log: list[str] = []
    with engines(log, reloads=True) as gate:
        gate.answers(Path("current"), REQUESTS, 8)
        other = gate.answers(Path("other-layout"), REQUESTS, 8)
    assert [g.text for g in other] == ["other-layout"]
    assert log == ["start current", "close current", "start other-layout", "close other-layout"]


def test_a_backend_without_reload_starts_one_engine_per_model() -> None:
    log: list[str] = []
    with engines(log, reloads=False) as gate:
        gate.answers(Path("current"), REQUESTS, 8)
        gate.answers(Path("candidate"), REQUESTS, 8)
    assert log == ["start current", "close current", "start candidate", "close candidate"]


def test_the_engine_is_closed_when_answering_fails() -> None:
    log: list[str] = []

    class Failing(FakeBackend):
        async def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
            raise RuntimeError("engine died")

    with (
        pytest.raises(RuntimeError, match="engine died"),
        GateEngines(lambda p: Failing(p, log, reloads=True)) as gate,
    ):
        gate.answers(Path("current"), REQUESTS, 8)
    assert log == ["start current", "close current"]


def model_dir(root: Path, name: str, **config: Any) -> Path:
    path = root / name
    path.mkdir()
    base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2}
    (path / "config.json").write_text(json.dumps({**base, **config}))
    (path / "tokenizer.json").write_text('{"model": "bpe"}')
    return path


def test_weights_load_in_place_only_into_the_same_network_and_tokenizer(tmp_path: Path) -> None:
    parent = model_dir(tmp_path, "parent", transformers_version="5.19.0", use_cache=True)
    # A save rewrites these fields; the network is the same.
    candidate = model_dir(
        tmp_path, "candidate", transformers_version="5.20.0", use_cache=False, dtype="float32"
    )
    deeper = model_dir(tmp_path, "deeper", num_hidden_layers=4)
    other_tokens = model_dir(tmp_path, "other-tokens")
    (other_tokens / "tokenizer.json").write_text('{"model": "unigram"}')
    no_tokenizer = model_dir(tmp_path, "no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    assert same_weights_layout(parent, candidate)
    assert not same_weights_layout(parent, deeper)
    assert not same_weights_layout(parent, other_tokens)
    assert not same_weights_layout(parent, no_tokenizer)
    assert not same_weights_layout(parent, tmp_path / "missing")
