"""Which engine serves a quantized directory, and what is refused (pure logic: manifests
on disk, no model loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.model_dir import ModelManifest, QuantizationRecord
from router import BackendConfig
from router._factory import BACKEND_REASONS, choose_backend
from router._quantize import SCHEMES, scheme_of


def _model_dir(tmp_path: Path, scheme: str | None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    quant = QuantizationRecord(scheme=scheme, parent="v1") if scheme else None
    ModelManifest(version="v1-q", quantization=quant).save(tmp_path)
    return tmp_path


@pytest.mark.parametrize("scheme", ["int8_dynamic", "int8_dynamic_per_channel", "bf16"])
def test_a_cpu_scheme_is_served_by_transformers_even_where_vllm_would_be_chosen(tmp_path, scheme):
    choice = choose_backend(BackendConfig(kind="auto"), _model_dir(tmp_path, scheme))
    assert (choice.kind, choice.reason, choice.detail) == ("transformers", "quantization_scheme", scheme)
    assert choice.reason in BACKEND_REASONS


def test_a_forced_engine_that_cannot_serve_the_scheme_is_refused_not_served_unquantized(tmp_path):
    with pytest.raises(ConfigError, match="int8_dynamic"):
        choose_backend(BackendConfig(kind="vllm"), _model_dir(tmp_path, "int8_dynamic"))


def test_fp8_is_vllms_and_marked_untested(tmp_path):
    choice = choose_backend(BackendConfig(kind="auto"), _model_dir(tmp_path, "fp8"), device="cuda")
    assert choice.kind == "vllm" and not SCHEMES["fp8"].tested
    assert SCHEMES["fp8"].vllm_quantization == "fp8"


def test_an_unknown_scheme_is_a_clear_error_and_a_plain_directory_has_none(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    assert scheme_of(_model_dir(tmp_path / "a", None)) is None
    with pytest.raises(ConfigError, match="unknown quantization scheme 'int3'"):
        scheme_of(_model_dir(tmp_path / "b", "int3"))


@pytest.mark.parametrize("scheme", ["w8a8", "w4a16"])
def test_a_checkpoint_scheme_is_vllms_in_bfloat16_on_cpu_and_gpu(tmp_path, scheme):
    for device in ("cpu", "cuda"):
        choice = choose_backend(BackendConfig(kind="auto"), _model_dir(tmp_path, scheme), device=device)
        assert (choice.kind, choice.detail) == ("vllm", scheme)
    spec = SCHEMES[scheme]
    assert spec.checkpoint and spec.dtype == "bfloat16" and spec.vllm_quantization == "compressed-tensors"
    with pytest.raises(ConfigError, match="forced to transformers"):
        choose_backend(BackendConfig(kind="transformers"), _model_dir(tmp_path, scheme))


def test_a_scheme_the_engine_cannot_serve_here_is_refused_before_any_engine_starts(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="fp8, which vllm serves on cuda only, not on this machine's cpu"):
        choose_backend(BackendConfig(kind="auto"), _model_dir(tmp_path / "a", "fp8"), device="cpu")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        choose_backend(BackendConfig(kind="auto"), _model_dir(tmp_path / "b", "w8a8"), device="cpu")
