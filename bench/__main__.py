"""``make bench``: run every benchmark, then regenerate docs/benchmarks.md from the results.

    python -m bench                      # everything (overhead ~25 min, loop_robustness ~4 h,
                                         # recipe_replay ~30 min a stored seed)
    python -m bench --only overhead,loop # some of them
    python -m bench --render-only        # rebuild the report from bench/results/*.json
    python -m bench --quick              # smaller sizes (DISTILLERY_BENCH_QUICK=1)

A benchmark is a name in ``BENCHMARKS``: ``bench.<name>.run()`` measures (writes
``bench/results/<name>.json``, takes its own size knobs from env/argv) and
``bench.report.<name>.render(img_dir) -> list[str]`` renders its Markdown section (plots
under ``img_dir``; empty when its results file is missing). ``--only`` refuses a name it
does not know, before anything runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import traceback

from bench.report import DOC, document

# The loop numbers are for the transformers student (the product default ``auto`` picks
# vLLM where it is installed); vllm_vs_transformers compares the two, and overhead runs
# vLLM in every target (its servers get their own environment).
os.environ.setdefault("DISTILLERY_STUDENT__KIND", "transformers")

# Order = run order = report order. Each name is a measuring module ``bench.<name>`` (its
# ``run()`` writes ``bench/results/<name>.json``) and a rendering one ``bench.report.<name>``.
BENCHMARKS: list[str] = [
    "overhead",
    "streaming",
    "loop",
    "feedback_throughput",
    "vllm_vs_transformers",
    "real_loop",
    "loop_robustness",
    "recipe_replay",
    "quantize",
    "live_quality",
    "structured",
    "cluster",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a quick look")
    args = parser.parse_args(argv)
    only = [x for x in args.only.split(",") if x]
    unknown = [x for x in only if x not in BENCHMARKS]
    if unknown:  # before anything runs or the report is rewritten
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.quick:
        os.environ["DISTILLERY_BENCH_QUICK"] = "1"
    failed = []
    if not args.render_only:
        for name in BENCHMARKS:
            if only and name not in only:
                continue
            print(f"== {name}", flush=True)
            try:
                importlib.import_module(f"bench.{name}").run()
            except Exception:  # one failing benchmark must not lose the others' results
                traceback.print_exc()
                failed.append(name)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(document(BENCHMARKS))
    print(f"wrote {DOC}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
