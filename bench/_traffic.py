"""Closed-loop background traffic from threads of this process (a canary or a swap needs
live requests while it runs); the benchmarks and the integration tests share it. For
measured load, ``bench._load`` (a separate process) instead."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from common.model_dir import CALIBRATION_FILE

__all__ = ["Traffic", "copy_with_threshold", "mixed_demo_prompt"]

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def mixed_demo_prompt(rng: random.Random) -> str:
    """A demo prompt on two routes the student knows or the one it never learned (``shift``)."""
    word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))
    return f"{rng.choice(('reverse', 'upper', 'shift'))}: {word} ="


def copy_with_threshold(source: Path, dest: Path, threshold: float) -> Path:
    """A canary candidate: ``source``'s model directory with its calibrated threshold replaced
    (the same weights; a miscalibrated version only live traffic can tell apart)."""
    shutil.copytree(source, dest)
    path = dest / CALIBRATION_FILE
    calibration = json.loads(path.read_text())
    calibration["threshold"] = threshold
    path.write_text(json.dumps(calibration))
    return dest


class Traffic:
    """Closed-loop clients sending prompts until stopped (``prompt(rng)``; by default one
    student-skill prompt)."""

    def __init__(
        self,
        url: str,
        workers: int = 3,
        model: str = "distillery-student",
        prompt: Callable[[random.Random], str] = lambda rng: "reverse: abc =",
        timeout_s: float = 30.0,
    ) -> None:
        self._timeout_s = timeout_s
        self.url = url
        self.model = model
        self._prompt = prompt
        self.statuses: Counter[int] = Counter()
        self.versions: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(random.Random(i),), daemon=True) for i in range(workers)
        ]
        self._lock = threading.Lock()

    def _loop(self, rng: random.Random) -> None:
        with httpx.Client(timeout=self._timeout_s) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(
                        f"{self.url}/v1/completions",
                        json={"model": self.model, "prompt": self._prompt(rng), "max_tokens": 8},
                    )
                    with self._lock:
                        self.statuses[r.status_code] += 1
                        if r.status_code == 200:
                            self.versions.append((time.monotonic(), r.headers["x-distillery-model-version"]))
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors.append(repr(exc))

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def seen_since(self, t0: float) -> set[str]:
        with self._lock:
            return {v for t, v in self.versions if t >= t0}
