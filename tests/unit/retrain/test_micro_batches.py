"""How a refresh's steps are cut into micro-batches (pure logic: no model, no TRL)."""

from __future__ import annotations

import random

from retrain import DistillConfig
from retrain._train import LengthSortedSteps, _micro_batching, padded_positions


def test_one_batch_pads_every_row_to_the_steps_longest():
    assert padded_positions([10, 50, 20, 30], step_rows=4, micro_batches=1) == 4 * 50
    assert padded_positions([10, 50, 20, 30], step_rows=4, micro_batches=2) == 2 * 50 + 2 * 20


def test_micro_batches_where_a_few_long_rows_would_pad_the_rest():
    rng = random.Random(0)
    sizes = [rng.choice((60, 70, 80)) if i % 4 else 430 for i in range(400)]  # 1 in 4: a tool prompt
    args = _micro_batching(DistillConfig(batch_size=16, micro_batches=4), sizes)
    assert args == {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4}


def test_one_batch_where_rows_are_alike():
    rng = random.Random(0)
    sizes = [rng.randint(50, 80) for _ in range(400)]
    args = _micro_batching(DistillConfig(batch_size=16, micro_batches=4), sizes)
    assert args == {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1}
    off = _micro_batching(DistillConfig(batch_size=16, micro_batches=1), [430, 60] * 200)
    assert off["gradient_accumulation_steps"] == 1


def test_a_step_keeps_its_random_rows_only_their_order_changes():
    lengths = [i % 7 * 10 + 5 for i in range(40)]
    sampler = LengthSortedSteps(lengths, step_rows=8, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(40))  # every row once an epoch
    assert first != second  # a fresh permutation each epoch
    for start in range(0, 40, 8):
        step = first[start : start + 8]
        assert [lengths[i] for i in step] == sorted((lengths[i] for i in step), reverse=True)
    permutation = list(LengthSortedSteps([1] * 40, step_rows=8, seed=3))  # equal lengths: unsorted
    assert [set(first[s : s + 8]) for s in range(0, 40, 8)] == [
        set(permutation[s : s + 8]) for s in range(0, 40, 8)
    ]
