"""The Markdown section and plots of ``bench.vllm_vs_transformers`` (from its results JSON).

Rendering only: nothing here measures (``python -m bench --render-only`` rebuilds the report
without running a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from bench._common import RESULTS
from bench.vllm_vs_transformers import NAME


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    m, cfg, ratio = data["machine"], data["config"], data["ratio_vllm_over_transformers"]
    lines = [
        "## Student engine: vLLM vs transformers",
        "",
        f"Machine: {m['cpus']} cores, {m['cpu']}; {m['when']}. The demo student in one process,",
        f"closed loop of {cfg['concurrency']} clients, {cfg['rounds']} x {cfg['requests_per_round']} greedy",
        "requests "
        f"per backend (rounds interleaved), max_tokens {cfg['max_tokens']}. transformers: "
        f"{cfg['transformers']['torch_threads']} torch threads behind the replica's batching (<= "
        f"{cfg['transformers']['max_batch_size']}, {cfg['transformers']['wait_s'] * 1000:g} ms); vLLM "
        f"(CPU build, {cfg['vllm']['dtype']}, eager={cfg['vllm']['enforce_eager']}): continuous batching; "
        f"engine start {cfg['vllm_engine_start_s']} s.",
        "",
        "| backend | tokens/s | requests/s | p50 | p99 |",
        "|---|---|---|---|---|",
    ]
    for name, r in data["backends"].items():
        lines.append(
            f"| {name} | {r['tokens_per_s']:.0f} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} ms "
            f"| {r['p99_ms']:.1f} ms |"
        )
    lines += [
        "",
        f"vLLM / transformers: tokens/s x{ratio['tokens_per_s']}, p50 latency x{ratio['p50_latency']}, "
        f"p99 latency x{ratio['p99_latency']}. GPU: not measured (no GPU machine was available).",
        "",
    ]
    return lines
