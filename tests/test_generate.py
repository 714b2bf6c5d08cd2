"""The sampling pipeline: seeds, batching, and images that do not depend on batch size."""

from __future__ import annotations

import torch

from diffgen.checkpoint import load_model
from diffgen.sampling.generate import ImageTask, batches, generate
from diffgen.sampling.prompts import PromptSpec
from diffgen.sampling.tasks import plan_tasks

DEFAULTS = ImageTask(index=0, prompt="", seed=0, steps=4)


def test_seed_plus_k_across_prompts_and_repeats():
    tasks = plan_tasks([PromptSpec("a", 2), PromptSpec("b", 3), PromptSpec("c", 1, seed=100)],
                       10, DEFAULTS)
    assert [(t.index, t.prompt, t.seed) for t in tasks] == [
        (0, "a", 10), (1, "a", 11), (2, "b", 12), (3, "b", 13), (4, "b", 14), (5, "c", 100)]


def test_batches_split_on_settings_and_size():
    tasks = plan_tasks([PromptSpec("a", 3), PromptSpec("b", 2, overrides={"steps": 7})], 0, DEFAULTS)
    assert [[t.index for t in b] for b in batches(tasks, 2)] == [[0, 1], [2], [3, 4]]


def test_batch_size_does_not_change_images(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    specs = [PromptSpec("a red apple", 3), PromptSpec("a blue car", 2)]
    for sampler in ("dpmpp-2m", "euler-ancestral"):
        tasks = plan_tasks(specs, 5, ImageTask(index=0, prompt="", seed=0, steps=4, sampler=sampler))
        one = torch.stack([img for _, img, _ in generate(model, tasks, batch_size=1)])
        many = torch.stack([img for _, img, _ in generate(model, tasks, batch_size=8)])
        assert (one - many).abs().max() < 1 / 127.5, sampler
        assert not torch.allclose(one[0], one[1])  # different seeds, different images
