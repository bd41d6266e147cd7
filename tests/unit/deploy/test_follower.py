"""The registry follower: the one hot-swap path (pure logic: a real registry on disk, a
recording ``apply`` instead of a replica)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from deploy import ModelRegistry, RegistryFollower, RolloutState


def _model_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / "src" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "distillery_model.json").write_text(json.dumps({"version": name}))
    return d


@pytest.mark.asyncio
async def test_each_pointer_change_is_applied_once_and_in_order(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    for v in ("v1", "v2"):
        reg.register(_model_dir(tmp_path, v), v, {"parent": None})
    applied: list[RolloutState] = []

    async def apply(state: RolloutState) -> None:
        applied.append(state)

    follower = RegistryFollower(reg, apply)
    assert not await follower.check() and applied == []  # no pointers yet: nothing applied
    reg.promote("v1")
    assert await follower.check() and not await follower.check()  # applied once, not per poll
    assert applied[-1].model_path == reg.get("v1").path and applied[-1].canary_dir is None
    reg.set_threshold_override(0.3)
    assert await follower.check()
    assert applied[-1].threshold_override == 0.3 and len(applied) == 2


@pytest.mark.asyncio
async def test_a_failed_apply_is_retried_at_the_next_poll(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(_model_dir(tmp_path, "v1"), "v1", {"parent": None})
    reg.promote("v1")
    calls: list[str] = []

    async def apply(state: RolloutState) -> None:
        calls.append(str(state.model_dir))
        if len(calls) == 1:
            raise RuntimeError("the new engine did not load")

    follower = RegistryFollower(reg, apply, poll_s=0.01).start()
    try:
        for _ in range(200):
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await follower.stop()
    assert len(calls) == 2, "a failed swap must be retried, not forgotten"
    assert not await follower.check()  # the second apply succeeded: nothing left to do


def test_a_share_without_a_canary_is_refused():
    with pytest.raises(ValueError, match="canary_dir"):
        RolloutState(canary_share=0.2)


@pytest.mark.asyncio
async def test_reading_a_new_rollout_does_not_stall_the_replicas_event_loop(tmp_path):
    """With versions at a URL, reading the rollout pulls the new version's files: the
    replica's requests run on the same event loop and must go on meanwhile."""
    import threading

    reg = ModelRegistry(tmp_path / "reg")
    reg.register(_model_dir(tmp_path, "v1"), "v1", {"parent": None})
    reg.promote("v1")
    pulling, served_meanwhile = threading.Event(), threading.Event()
    read = reg.rollout_state

    def slow_pull() -> RolloutState:
        pulling.set()
        assert served_meanwhile.wait(10), "the event loop was blocked during the pull"
        return read()

    reg.rollout_state = slow_pull  # type: ignore[method-assign]
    applied: list[RolloutState] = []

    async def apply(state: RolloutState) -> None:
        applied.append(state)

    async def a_request() -> None:
        while not pulling.is_set():
            await asyncio.sleep(0.005)
        served_meanwhile.set()  # this coroutine ran while the pull was in progress

    await asyncio.gather(RegistryFollower(reg, apply).check(), a_request())
    assert len(applied) == 1
