"""Per-step seeding, batch plans and learning-rate schedules: the pieces exact resume rests on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffgen.data import TrainingSet
from diffgen.training.batches import BatchPlan, cosine_lr, lr_at, pick_captions, step_generator


def draws(gen: torch.Generator) -> list[float]:
    return torch.rand(4, generator=gen).tolist()


def test_step_generator_depends_only_on_its_four_coordinates():
    base = draws(step_generator(0, "diffusion", 7, 0))
    assert draws(step_generator(0, "diffusion", 7, 0)) == base  # a fresh process would get the same
    for other in [(1, "diffusion", 7, 0), (0, "clip", 7, 0), (0, "diffusion", 8, 0), (0, "diffusion", 7, 1)]:
        assert draws(step_generator(*other)) != base, other


def test_batch_plan_walks_each_epoch_as_a_permutation_split_over_ranks_and_micro_batches():
    indices = list(range(100, 130))  # 30 training images
    plan = BatchPlan(indices, per_rank=2, accum=3, world_size=2, seed=5)
    assert plan.global_batch == 12
    seen = [i for step in range(5) for micro in range(3) for rank in range(2) for i in plan.batch(step, micro, rank)]
    # 60 images = two epochs: each is a permutation of the training indices, and they differ
    assert sorted(seen[:30]) == indices and sorted(seen[30:]) == indices and seen[:30] != seen[30:]
    assert plan.position(5) == {"epoch": 2, "offset": 0}
    assert plan.position(3) == {"epoch": 1, "offset": 6}
    # a fresh plan (a resumed process) hands out the same batch for the same coordinates
    assert BatchPlan(indices, 2, 3, 2, 5).batch(4, 1, 1) == plan.batch(4, 1, 1)
    assert BatchPlan(indices, 2, 3, 2, 6).batch(0, 0, 0) != plan.batch(0, 0, 0)


def test_caption_choice_and_dropout_come_from_the_step_generator():
    data = TrainingSet(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), [("a", "b"), ("c",), ("d", "e", "f")],
                       [Path("x")] * 3)
    first = pick_captions(data, [0, 1, 2] * 20, step_generator(0, "diffusion", 3, 0), dropout=0.5)
    again = pick_captions(data, [0, 1, 2] * 20, step_generator(0, "diffusion", 3, 0), dropout=0.5)
    assert first == again
    assert 10 < first.count("") < 50  # about half dropped to the empty prompt
    assert set(first) - {""} <= {"a", "b", "c", "d", "e", "f"}
    assert "" not in pick_captions(data, [0, 1, 2] * 20, step_generator(0, "diffusion", 3, 0))


def test_learning_rate_schedules():
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 2.0, 0) == 2.0  # no warm-up
    total, warmup = 110, 10
    assert cosine_lr(0, total, 1.0, warmup) == pytest.approx(0.1)
    assert cosine_lr(warmup, total, 1.0, warmup) == pytest.approx(1.0)  # the peak, then cosine decay
    middle = warmup + (total - warmup) // 2
    assert cosine_lr(middle, total, 1.0, warmup) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert cosine_lr(total, total, 1.0, warmup) == pytest.approx(0.1)  # ends at 10%
    lrs = [cosine_lr(s, total, 1.0, warmup) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
