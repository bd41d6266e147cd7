"""Ray's and vLLM's socket directories fit Unix socket paths wherever the checkout is."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.paths import UNIX_SOCKET_PATH_MAX, socket_safe_dir
from gateway.app import RAY_SOCKET_ROOM, ray_temp_dir

pytestmark = pytest.mark.integration


def test_a_short_var_dir_keeps_ray_beside_it() -> None:
    var = Path("/tmp") / "dv"
    assert ray_temp_dir(var) == (var / "ray").resolve()


def test_a_deep_var_dir_gets_a_short_one_linked_from_it(tmp_path: Path) -> None:
    """Seen: ``distillery run`` from a checkout under pytest's temp path; Ray failed with
    "AF_UNIX path length cannot exceed 107 bytes", then vLLM with "ipc path ... is longer
    than 107 characters", and nothing served."""
    var = tmp_path / "a-checkout-deep-in-someones-home-directory" / "var" / "demo"
    assert len(str(var / "ray")) + RAY_SOCKET_ROOM > UNIX_SOCKET_PATH_MAX
    short = ray_temp_dir(var)
    assert len(str(short)) + RAY_SOCKET_ROOM <= UNIX_SOCKET_PATH_MAX
    assert (var / "ray").resolve() == short.resolve()  # the session logs are still under var/
    assert ray_temp_dir(var) == short  # the same var dir keeps the same one
    other = tmp_path / "another-checkout-deep-in-someones-home-directory" / "var" / "demo"
    assert ray_temp_dir(other) != short


def test_an_existing_directory_is_left_alone_when_too_long(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / "vllm" / "tmp"
    deep.mkdir(parents=True)
    short = socket_safe_dir(deep, 37, "distillery-test")
    assert len(str(short)) + 37 <= UNIX_SOCKET_PATH_MAX
    assert deep.is_dir() and not deep.is_symlink()  # a real directory is never replaced
