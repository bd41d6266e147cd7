"""Long work says what it is doing (issue 26): the labelling of the real pair's seeds
reports counts per batch, and the log form of the progress bar says every tenth."""

import asyncio
import logging

from distillery.cli._common import progress_bar
from retrain import Pair
from retrain._derive import label_with_teacher
from tests.fakes.clients import make_generation


class _Teacher:
    """A batch backend answering every request with the same text."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def generate(self, requests):
        self.batches.append(len(requests))
        return [make_generation("an answer") for _ in requests]


def test_labelling_reports_done_and_total_after_each_batch():
    teacher = _Teacher()
    seen: list[tuple[int, int]] = []
    pairs = [Pair(prompt=f"q{i}", completion="") for i in range(70)]
    labelled, dropped = asyncio.run(
        label_with_teacher(
            teacher, pairs, max_tokens=8, batch_size=32, on_batch=lambda d, t: seen.append((d, t))
        )
    )
    assert (len(labelled), dropped) == (70, 0)
    assert teacher.batches == [32, 32, 6]
    assert seen == [(32, 70), (64, 70), (70, 70)]


def test_without_a_tty_progress_is_logged_once_per_tenth_with_counts(caplog):
    with caplog.at_level(logging.INFO, logger="distillery"), progress_bar() as progress:
        for done in range(0, 641, 32):
            progress("labelling seeds", done, 640, None)
        for step in range(1, 201):
            progress("student bootstrap", step, 200, 0.5)
    lines = [r.fields for r in caplog.records if r.getMessage() == "progress"]  # type: ignore[attr-defined]
    labelling = [f for f in lines if f["task"] == "labelling seeds"]
    training = [f for f in lines if f["task"] == "student bootstrap"]
    assert labelling[0]["done"] == 0
    assert labelling[-1] == {"task": "labelling seeds", "done": 640, "total": 640}
    assert len(labelling) == 11 and "loss" not in labelling[0]
    assert len(training) == 11 and training[-1]["loss"] == 0.5
