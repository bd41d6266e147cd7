"""Streaming cascade: time to first token and the early decision, against vLLM's own server.

Three servers on the same student directory, one after the other in one run, each started
as a user starts it:

* ``gateway_replay``: ``distillery run`` with ``server.stream_mode: replay`` (the whole
  cascade first, then its answer cut into chunks): the decision on the whole answer;
* ``gateway_live``: the same with ``stream_mode: live``: the student's tokens flow once its
  calibrated commit rule decides, an escalation cancels the student at its commit point
  and relays the teacher as it writes, and (``decide_whole_early``) a whole (non-streamed)
  request is decided the same way; its route prior (``router._prior``, the shipped
  thresholds) first learns from other candidates of the same families (seed 12, sent
  whole), so a family the student always escalates skips the student;
* ``vllm_server``: ``python -m vllm.entrypoints.openai.api_server`` on the student (the
  baseline for a student-served stream).

Candidates are requests of the student's own skills and of skills it escalates (the demo:
completions of ``upper``/``reverse`` and ``shift``/``double``; the real pair: chat requests
of the four free-text support families). On each gateway they are sent whole at one client
(which tier answered, the answer, its latency), and the teacher's own answer to each
(``distillery-teacher``) is the reference for served-answer agreement, under the preset's
agreement metric, escalated answers counting as agreeing (the teacher serves them). The
replay gateway's split into served and escalated requests picks the streamed sets, sent at
1 and 16 clients to every server. The loop is off in both gateways (nothing retrains
mid-measurement).

    python -m bench.streaming [--only demo|real]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    REPO,
    RESULTS,
    ServedProcess,
    VLLMServer,
    distillery_run,
    gateway_env,
    percentile,
    run_load,
    write_result,
)

NAME = "streaming"
TARGETS = {
    "gateway_replay": "Distillery, whole-answer decision (stream_mode replay)",
    "gateway_live": "Distillery, streaming cascade (stream_mode live)",
    "vllm_server": "vLLM's own OpenAI server, student only",
}
STREAM_SIZES = {1: 40, 16: 96}
MAX_TOKENS = {"demo": 16, "real": 48}
CANDIDATES = {"demo": 120, "real": 120}
REAL_FAMILIES = ("order_number", "capital", "plural", "opposite")
if os.environ.get("DISTILLERY_BENCH_QUICK"):
    STREAM_SIZES, CANDIDATES = {1: 10, 16: 32}, {"demo": 40, "real": 40}


# ---- servers ---------------------------------------------------------------------------
def _gateway(mode: str, preset: str, models_dir: Path, var: Path, log: Path) -> tuple[ServedProcess, str]:
    env = gateway_env(var, models_dir, before=False, placement="ingress")
    env["DISTILLERY_SERVER__STREAM_MODE"] = mode
    env["DISTILLERY_SERVER__DECIDE_WHOLE_EARLY"] = "1" if mode == "live" else "0"
    env["DISTILLERY_LOOP__CHECK_INTERVAL_S"] = "86400"
    env["DISTILLERY_LOOP__NIGHTLY_AT"] = "off"
    # The route prior: off for the whole-answer decision (the cascade as it was), on with
    # the shipped thresholds for the streaming cascade, every served answer sampled so it
    # learns from one pass of the learning candidates, re-read every 2 s.
    env["DISTILLERY_CASCADE__PRIOR__ENABLED"] = "1" if mode == "live" else "0"
    env["DISTILLERY_CASCADE__PRIOR__REFRESH_S"] = "2"
    env["DISTILLERY_FEEDBACK__SAMPLE_RATE"] = "1.0"
    return distillery_run(env, preset, log)


# ---- candidates ------------------------------------------------------------------------
def _demo_candidates(n: int, seed: int = 11) -> dict[str, Any]:
    from demo import STUDENT_SKILLS, sample_examples

    rng = random.Random(seed)
    served = [e.prompt for e in sample_examples(STUDENT_SKILLS, n // 2, rng)]
    other = [e.prompt for e in sample_examples(("shift", "double"), n - n // 2, rng)]
    return {
        "prompts": served + other,
        "families": ["student_skill"] * len(served) + ["new_skill"] * len(other),
    }


def _real_candidates(n: int, seed: int = 11) -> dict[str, Any]:
    from demo._support import sample_support

    rows = sample_support(REAL_FAMILIES, n, random.Random(seed))
    return {"conversations": [r.as_dicts() for r in rows], "families": [r.family for r in rows]}


def _subset(items: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    key = "conversations" if "conversations" in items else "prompts"
    return {key: [items[key][i] for i in keep]}


# ---- measuring ---------------------------------------------------------------------------
def _load(
    url: str,
    items: dict[str, Any],
    model: str,
    concurrency: int,
    requests: int,
    *,
    max_tokens: int,
    stream: bool,
    work: Path,
    warmup: int | None = None,
) -> dict[str, Any]:
    chat = "conversations" in items
    spec = {
        "url": f"{url}/v1/{'chat/completions' if chat else 'completions'}",
        "prompts": items.get("prompts"),
        "conversations": items.get("conversations"),
        "concurrency": concurrency,
        "requests": requests,
        "warmup": concurrency * 2 if warmup is None else warmup,
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "keep": True,
        "extra": {"temperature": 0.0},
    }
    return run_load(spec, work)


def _ms(values: list[float], q: float) -> float | None:
    return round(percentile(values, q) * 1000, 1) if values else None


def _stream_point(raw: dict[str, Any]) -> dict[str, Any]:
    ttfts = raw["ttfts_s"]
    lat = raw["latencies_s"]
    return {
        "n": len(lat),
        "ttft_p50_ms": _ms(ttfts, 0.5),
        "ttft_p99_ms": _ms(ttfts, 0.99),
        "whole_p50_ms": _ms(lat, 0.5),
        "statuses": raw["statuses"],
        "tiers": raw["tiers"],
    }


def _streamed(
    send: Callable[[dict[str, Any], int, int], dict[str, Any]],
    items: dict[str, Any],
    sets: dict[str, list[int]],
) -> dict[str, Any]:
    """Each non-empty set of candidates streamed at every level of ``STREAM_SIZES``:
    ``send(selection, clients, requests)`` runs one load."""
    out: dict[str, Any] = {}
    for name, keep in sets.items():
        if not keep:
            continue
        for c, size in STREAM_SIZES.items():
            out[f"{name}_c{c}"] = point = _stream_point(send(_subset(items, keep), c, size))
            print(f"    {name} c={c}: ttft p50 {point['ttft_p50_ms']} ms, tiers {point['tiers']}", flush=True)
    return out


def _whole(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate, in candidate order: tier, text, latency."""
    return [
        {"tier": r["tier"], "text": r["text"], "latency_s": r["latency_s"], "status": r["status"]}
        for r in sorted(records, key=lambda r: r["index"])
    ]


def _gateway_suite(
    mode: str,
    label: str,
    preset: str,
    models_dir: Path,
    items: dict[str, Any],
    sets: dict[str, list[int]] | None,
    logs: Path,
    learn: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]] | None]:
    """One gateway: the candidates whole (and the teacher's references, on the first),
    then the streamed sets. ``sets`` None: the split comes from this run's tiers.
    ``learn``: other candidates of the same families, sent first so the route prior
    learns from this gateway's own decisions before anything is measured."""
    max_tokens = MAX_TOKENS[label]
    n = len(items.get("prompts") or items.get("conversations") or [])
    work = Path(tempfile.mkdtemp(prefix=f"bench-stream-{mode}-"))
    server, url = _gateway(mode, preset, models_dir, work, logs / f"streaming-{label}-{mode}.log")
    out: dict[str, Any] = {}
    refs: list[dict[str, Any]] | None = None
    try:
        print(f"  [{label}] gateway {mode}: starting", flush=True)
        server.wait()

        def send(
            model: str, sel: dict[str, Any], c: int, size: int, *, stream: bool, warm: int | None = None
        ) -> Any:
            return _load(
                url, sel, model, c, size, max_tokens=max_tokens, stream=stream, work=work, warmup=warm
            )

        send("distillery", items, 2, 8, stream=False)  # warm every path
        if learn is not None:
            out["route_prior"] = _learn_prior(
                url, learn, lambda sel, c, size: send("distillery", sel, c, size, stream=False, warm=0)
            )
            print(f"  [{label}] route prior: {out['route_prior']}", flush=True)
        if sets is None:
            print(f"  [{label}] the teacher's reference answers", flush=True)
            refs = _whole(send("distillery-teacher", items, 4, n, stream=False, warm=0)["records"])
        print(f"  [{label}] gateway {mode}: {n} whole requests at 1 client", flush=True)
        whole = _whole(send("distillery", items, 1, n, stream=False, warm=0)["records"])
        if sets is None:
            sets = {
                "served": [i for i, w in enumerate(whole) if w["tier"] == "student"],
                "escalated": [i for i, w in enumerate(whole) if w["tier"] == "teacher"],
            }
        out.update(_streamed(lambda sel, c, size: send("distillery", sel, c, size, stream=True), items, sets))
        out["sets"] = sets
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out, whole, refs


def _learn_prior(
    url: str, learn: dict[str, Any], send: Callable[[dict[str, Any], int, int], Any]
) -> list[dict[str, Any]]:
    """The learning candidates, whole at 4 clients; then wait until the prior's table
    counts them all (the consumer has stored them and the prior has re-read the store)."""
    n = len(learn.get("prompts") or learn.get("conversations") or [])
    send(learn, 4, n)
    deadline = time.monotonic() + 120
    table: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        table = httpx.get(f"{url}/healthz", timeout=10).json().get("route_prior") or []
        if sum(int(r["escalations"]) + int(r["samples"]) for r in table) >= 0.95 * n:
            break
        time.sleep(1)
    return table


def _vllm_suite(
    label: str, models_dir: Path, items: dict[str, Any], sets: dict[str, list[int]], logs: Path
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-stream-vllm-"))
    server = VLLMServer(
        models_dir / "student", logs / f"streaming-{label}-vllm_server.log", served_name="student"
    )
    out: dict[str, Any] = {}
    try:
        print(f"  [{label}] vLLM's own server: starting", flush=True)
        server.wait()
        url, max_tokens = server.url, MAX_TOKENS[label]
        _load(url, items, "student", 2, 8, max_tokens=max_tokens, stream=False, work=work)  # warm
        out.update(
            _streamed(
                lambda sel, c, size: _load(
                    url, sel, "student", c, size, max_tokens=max_tokens, stream=True, work=work
                ),
                items,
                sets,
            )
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _decisions(
    preset: str, families: list[str], refs: list[dict[str, Any]], whole: list[dict[str, Any]]
) -> dict[str, Any]:
    """Escalation rate and served agreement with the teacher's reference, overall and per
    family (escalated answers count as agreeing: the teacher serves them)."""
    from distillery.settings import load_settings
    from router import AgreementMetric

    agree = AgreementMetric(load_settings(preset=preset).agreement)
    rows = [
        (f, w["tier"] == "teacher", w["tier"] == "teacher" or agree(w["text"], r["text"]))
        for f, w, r in zip(families, whole, refs, strict=True)
        if w["status"] == 200 and r["status"] == 200
    ]

    def rates(sel: list[tuple[str, bool, bool]]) -> dict[str, float | int]:
        return {
            "n": len(sel),
            "escalation_rate": round(sum(e for _, e, _ in sel) / len(sel), 4) if sel else 0.0,
            "agreement": round(sum(a for _, _, a in sel) / len(sel), 4) if sel else 0.0,
        }

    return {
        **rates(rows),
        "agreement_metric": agree.name,
        "by_family": {f: rates([r for r in rows if r[0] == f]) for f in sorted(set(families))},
    }


def _escalated_latency(whole: list[dict[str, Any]], both: list[int]) -> float | None:
    return _ms([whole[i]["latency_s"] for i in both], 0.5)


def _suite(
    label: str, preset: str, models_dir: Path, items: dict[str, Any], learn: dict[str, Any]
) -> dict[str, Any]:
    logs = REPO / "var" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    families: list[str] = items.pop("families")
    learn.pop("families")
    replay, whole_replay, refs = _gateway_suite("replay", label, preset, models_dir, items, None, logs)
    assert refs is not None
    sets: dict[str, list[int]] = replay["sets"]
    live, whole_live, _ = _gateway_suite("live", label, preset, models_dir, items, sets, logs, learn)
    prior_table = live.pop("route_prior", None)
    vllm = _vllm_suite(label, models_dir, items, sets, logs)
    both = [
        i for i in range(len(whole_live)) if whole_replay[i]["tier"] == whole_live[i]["tier"] == "teacher"
    ]
    flips = sum(a["tier"] != b["tier"] for a, b in zip(whole_replay, whole_live, strict=True))
    decisions = {
        "whole_answer": _decisions(preset, families, refs, whole_replay),
        "early": _decisions(preset, families, refs, whole_live),
        "decisions_differ": flips,
        "n": len(whole_live),
    }
    latency = {
        "escalated_in_both": len(both),
        "before_p50_ms": _escalated_latency(whole_replay, both),
        "after_p50_ms": _escalated_latency(whole_live, both),
        "served_before_p50_ms": _ms([w["latency_s"] for w in whole_replay if w["tier"] == "student"], 0.5),
        "served_after_p50_ms": _ms([w["latency_s"] for w in whole_live if w["tier"] == "student"], 0.5),
    }
    from common.model_dir import CalibrationRecord

    cal = CalibrationRecord.load(models_dir / "student")
    commit = cal.commit.get("text") if cal is not None else None
    return {
        "models_dir": str(models_dir),
        "max_tokens": MAX_TOKENS[label],
        "commit": commit.model_dump() if commit is not None else None,
        "threshold": cal.threshold if cal is not None else None,
        "targets": {"gateway_replay": replay, "gateway_live": live, "vllm_server": vllm},
        "decisions": decisions,
        "escalated_whole_latency": latency,
        "route_prior": prior_table,
    }


def _summary(suite: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    t = suite["targets"]
    d = suite["decisions"]
    lat = suite["escalated_whole_latency"]
    out = {
        "vllm_server_ttft_p50_ms_c1": t["vllm_server"].get("served_c1", {}).get("ttft_p50_ms"),
        "gateway_ttft_p50_ms_c1": t["gateway_live"].get("served_c1", {}).get("ttft_p50_ms"),
        "gateway_replay_ttft_p50_ms_c1": t["gateway_replay"].get("served_c1", {}).get("ttft_p50_ms"),
        "escalated_latency_before_ms": lat["before_p50_ms"],
        "escalated_latency_after_ms": lat["after_p50_ms"],
        "agreement_whole_answer": d["whole_answer"]["agreement"],
        "agreement_early_decision": d["early"]["agreement"],
        "escalation_whole_answer": d["whole_answer"]["escalation_rate"],
        "escalation_early_decision": d["early"]["escalation_rate"],
    }
    a, g = out["vllm_server_ttft_p50_ms_c1"], out["gateway_ttft_p50_ms_c1"]
    if a and g:
        out["ttft_ratio_c1"] = round(g / a, 3)
    b, e = out["escalated_latency_before_ms"], out["escalated_latency_after_ms"]
    if b and e:
        out["escalated_latency_reduction"] = round(1 - e / b, 3)
    return {f"{prefix}{k}": v for k, v in out.items()}


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming")
    parser.add_argument("--only", choices=("demo", "real"), default=None)
    args = parser.parse_args(argv if argv is not None else [])
    from distillery.settings import load_settings

    models = load_settings().resolved_models_dir.resolve()
    previous = (
        json.loads((RESULTS / f"{NAME}.json").read_text()) if (RESULTS / f"{NAME}.json").is_file() else {}
    )
    suites: dict[str, Any] = {}
    if args.only in (None, "real") and (models / "smollm2" / "student" / "config.json").is_file():
        n = CANDIDATES["real"]
        suites["real"] = _suite(
            "real", "smollm2", models / "smollm2", _real_candidates(n), _real_candidates(n, seed=12)
        )
    if args.only in (None, "demo"):
        n = CANDIDATES["demo"]
        suites["demo"] = _suite("demo", "demo", models, _demo_candidates(n), _demo_candidates(n, seed=12))
    for name, kept in (previous.get("suites") or {}).items():  # a run of one suite keeps the other's
        suites.setdefault(name, kept)
    summary: dict[str, Any] = {}
    if "real" in suites:
        summary.update(_summary(suites["real"]))
    if "demo" in suites:
        summary.update(_summary(suites["demo"], "demo_"))
        for key in [k for k in summary if k.startswith("demo_")]:  # no real pair: the demo's fill in
            summary.setdefault(key.removeprefix("demo_"), summary[key])
    result = {
        "benchmark": NAME,
        "targets_legend": TARGETS,
        "stream_sizes": STREAM_SIZES,
        "suites": suites,
        "summary": summary,
    }
    print(f"  wrote {write_result(NAME, result)}", flush=True)


if __name__ == "__main__":
    run(sys.argv[1:])
