"""Quantization schemes: which engine serves each, and how a CPU scheme is applied.

A quantized version is a registry version like any other: its directory holds the
parent's weights and a ``QuantizationRecord`` in its manifest; the engine applies the
scheme as it loads. What each scheme does to speed and to answers is measured
(``bench/quantize.py``, docs/benchmarks.md), not assumed, and depends on the CPU's
instructions: on a 2-core AVX-512 CPU without bf16 instructions the int8 torch schemes served
the 8-layer SmolLM2 student 1.4x faster through the gateway but changed 6% of its greedy
answers and bf16 ran at 0.6x; on a 2-core Xeon with AMX (bf16 and int8) bf16 ran at 2.3x and
the ``w8a8`` checkpoint on vLLM at 1.8x of fp32 on vLLM, each keeping 98.4% of the answers.

Schemes:

* ``int8_dynamic``: torch dynamic quantization, int8 weights per tensor, activations
  quantized per batch, on every decoder ``Linear`` (the output head stays fp32: with a
  tied 49k-token head, quantizing it changed most answers). Transformers backend, CPU.
* ``int8_dynamic_per_channel``: the same with one weight scale per output channel.
* ``bf16``: weights and activations in bfloat16. Transformers backend, CPU or GPU.
* ``w8a8``: a compressed-tensors checkpoint (SmoothQuant, then GPTQ int8 weights per
  channel; int8 activations per token, dynamic), written by llmcompressor
  (``retrain._quantize_job``). vLLM, CPU or GPU; its CPU kernel takes bfloat16 activations
  only ("int8_scaled_mm_with_quant: expect A to be bfloat16 or half" at float32), so the
  engine runs it in bfloat16.
* ``w4a16``: a compressed-tensors checkpoint, GPTQ int4 weights per group, 16-bit
  activations (vLLM's ``CPUWNA16LinearKernel`` on CPU). vLLM, in bfloat16.
* ``fp8``: vLLM's dynamic FP8 weight quantization (``quantization="fp8"``). GPU only;
  written for the vLLM engine and **untested on a GPU** (none was lent). vLLM's CPU build
  refuses it: with float32 ("not supported for quantization method fp8") and, with
  bfloat16, at engine start (``_C::static_scaled_fp8_quant`` is not built for CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.errors import ConfigError
from common.model_dir import ModelManifest

__all__ = ["SCHEMES", "QuantScheme", "apply_torch_scheme", "scheme_of"]


@dataclass(frozen=True)
class QuantScheme:
    name: str
    engine: Literal["transformers", "vllm"]
    devices: tuple[str, ...]
    tested: bool
    """False: written against the engine's API but never run (no GPU here)."""
    vllm_quantization: str | None = None
    checkpoint: bool = False
    """The directory holds the quantized weights (and a ``quantization_config`` in its
    config.json), written by the quantizer job; otherwise it holds the parent's weights
    and the engine quantizes as it loads."""
    dtype: Literal["bfloat16", "float16"] | None = None
    """The activation dtype the engine must run the scheme in (None: the tier's)."""

    def unservable_on(self, device: str) -> str | None:
        """Why this scheme cannot be served on ``device`` (None: it can)."""
        if device in self.devices:
            return None
        devices = " or ".join(self.devices)
        return f"{self.name}, which {self.engine} serves on {devices} only, not on this machine's {device}"


SCHEMES: dict[str, QuantScheme] = {
    s.name: s
    for s in (
        QuantScheme("int8_dynamic", "transformers", ("cpu",), tested=True),
        QuantScheme("int8_dynamic_per_channel", "transformers", ("cpu",), tested=True),
        QuantScheme("bf16", "transformers", ("cpu", "cuda"), tested=True),
        QuantScheme("fp8", "vllm", ("cuda",), tested=False, vllm_quantization="fp8"),
        *(
            QuantScheme(
                name,
                "vllm",
                ("cpu", "cuda"),
                tested=True,
                vllm_quantization="compressed-tensors",
                checkpoint=True,
                dtype="bfloat16",
            )
            for name in ("w8a8", "w4a16")  # llmcompressor checkpoints (retrain._quantize_job)
        ),
    )
}


def scheme_of(model_dir: Path) -> QuantScheme | None:
    """The scheme a model directory's manifest names (None: not quantized)."""
    manifest = ModelManifest.load(model_dir)
    if manifest is None or manifest.quantization is None:
        return None
    name = manifest.quantization.scheme
    if name not in SCHEMES:
        raise ConfigError(f"{model_dir}: unknown quantization scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def apply_torch_scheme(model: Any, scheme: QuantScheme) -> Any:
    """The model as the scheme serves it (the transformers backend calls this at load)."""
    import torch

    if scheme.name == "bf16":
        return model.to(torch.bfloat16)
    if scheme.name in ("int8_dynamic", "int8_dynamic_per_channel"):
        import warnings

        from torch.ao.quantization import (
            default_dynamic_qconfig,
            per_channel_dynamic_qconfig,
            quantize_dynamic,
        )

        per_channel = scheme.name.endswith("per_channel")
        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        head = model.get_output_embeddings()
        spec = {
            name: qconfig
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
        }
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated for torchao
            warnings.simplefilter("ignore")
            # In place: a copy would hold the fp32 weights and the int8 ones at once.
            return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)  # type: ignore[no-untyped-call]
    raise ConfigError(f"quantization scheme {scheme.name!r} is served by {scheme.engine}, not transformers")
