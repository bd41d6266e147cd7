"""The Markdown section and plots of ``bench.overhead`` (from its results JSON).

Rendering only: nothing here measures (``python -m bench --render-only`` rebuilds the report
without running a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import REPO, RESULTS
from bench.overhead import MAX_TOKENS, NAME, TARGETS


def _suite_table(name: str, suite: dict[str, Any]) -> list[str]:
    models = Path(suite["models_dir"])
    where = models.relative_to(REPO) if models.is_relative_to(REPO) else models
    lines = [
        f"**{name}** (`{where}`, {suite['workload']['kind']}, "
        f"{suite['workload']['distinct']} distinct requests, max_tokens {MAX_TOKENS}; medians of "
        f"{len(next(iter(suite['targets'].values()))[str(suite['levels'][0])]['rounds'])} rounds)",
        "",
        "| target | clients | p50 ms | p99 ms | req/s | tokens/s | CPU ms per request, by process |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, levels in suite["targets"].items():
        for c, row in levels.items():
            cpu = ", ".join(
                f"{k} {v:.2f}"
                for k, v in sorted(row["cpu_ms_per_request"].items(), key=lambda kv: -kv[1])
                if v >= 0.05
            )
            lines.append(
                f"| {TARGETS[target]} | {c} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['rps']:.0f} "
                f"| {row['tokens_per_s']:.0f} | {cpu} |"
            )
    r = suite.get("ratios", {})
    t = suite["targets"]
    by_round = [
        f"{x['rps'] / y['rps']:.2f}x"
        for x, y in zip(t["gateway"]["16"]["rounds"], t["vllm_server"]["16"]["rounds"], strict=False)
    ]
    lines += ["", ", ".join(f"`{k}` = {v}" for k, v in r.items() if not k.endswith("_by_round"))]
    lines += [f"(c)/(a) requests/s at 16 clients, round by round: {', '.join(by_round)}", ""]
    return lines


def _plot(suites: dict[str, Any], img_dir: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    demo = suites.get("demo")
    if not demo:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for target, levels in demo["targets"].items():
        cs = [int(c) for c in levels]
        axes[0].plot(cs, [levels[str(c)]["rps"] for c in cs], marker="o", label=TARGETS[target][:4] + target)
        axes[1].plot(cs, [levels[str(c)]["p50_ms"] for c in cs], marker="o", label=target)
    for ax, title in zip(axes, ("requests/s", "p50 latency, ms"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    img_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(img_dir / "overhead_fast_path.png", dpi=110)
    plt.close(fig)
    return "img/overhead_fast_path.png"


def render(img_dir: Path) -> list[str]:
    path = RESULTS / f"{NAME}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if "suites" not in data:
        return []
    lines = [
        "## Serving fast path: against vLLM's own server",
        "",
        f"`python -m bench.overhead` ({data['machine']['when']}, {data['machine']['cpus']} cores). Each",
        "target is a server started as a user starts it, on the same student directory with the",
        "same engine settings, measured one after the other, the order changed round to round,",
        "under closed-loop load from a separate process. Targets: the vLLM",
        "server a user would run",
        "instead (a); the student Serve deployment behind a bare ingress (b); `distillery run` as",
        "shipped (c), and with the student as its own deployment (c'); the previous default (d).",
        "",
    ]
    for name, suite in data["suites"].items():
        if suite:
            lines += _suite_table({"demo": "Demo student", "real": "Real student (SmolLM2 cut)"}[name], suite)
    plot = _plot(data["suites"], img_dir)
    if plot:
        lines += [f"![fast path]({plot})", ""]
    return lines
