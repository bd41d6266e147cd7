"""Code that runs inside vLLM's worker (``worker_extension_cls``), where the model is.

vLLM's ``reload_weights`` loads a checkpoint into the running model and re-processes each
layer whose weights it loaded. An output head tied to the token embeddings has no weights
of its own in the checkpoint, so on the CPU it keeps the packed copy of the *old*
embedding matrix that its GEMM reads (``dispatch_cpu_unquantized_gemm``): measured on the
demo student, 3 of 24 answers then differed from an engine started on the new directory.
``distillery_reload_weights`` re-packs it after the reload. Imported by the engine's worker
process only (vLLM resolves the class by name there)."""

from __future__ import annotations

from typing import Any

__all__ = ["WeightReload", "WORKER_EXTENSION"]

WORKER_EXTENSION = "router._vllm_worker.WeightReload"


class WeightReload:
    """Mixed into vLLM's worker class; ``self`` is the worker."""

    model_runner: Any

    def distillery_reload_weights(self, weights_path: str) -> None:
        from vllm.platforms import current_platform

        self.model_runner.reload_weights(weights_path=weights_path, is_checkpoint_format=True)
        head = getattr(self.model_runner.get_model(), "lm_head", None)
        if current_platform.is_cpu() and head is not None and hasattr(head, "cpu_linear"):
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            dispatch_cpu_unquantized_gemm(head, remove_weight=False)
