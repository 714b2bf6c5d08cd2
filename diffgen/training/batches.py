"""Which images, captions, noise and learning rate each training step uses.

Every random draw of step s (which images, which caption, caption dropout, noise levels, noise)
comes from a generator seeded by (seed, stage, step, rank). With the global RNG state saved too,
a resumed run repeats exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from diffgen.data import TrainingSet
from diffgen.engine.pixels import from_uint8


def step_generator(seed: int, stage: str, step: int, rank: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, stage, step, rank)."""
    digest = hashlib.sha256(f"{seed}/{stage}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class NoiseGenerator:
    """The generator for a step's noise levels and noise images.

    On the CPU that is the step's own generator. On a GPU, drawing the image noise on the CPU and
    copying it over would cost more than the training step, so a device generator is re-seeded
    from the step's generator instead: still a function of (seed, stage, step, rank), so resume
    stays exact, but the numbers differ from a CPU run of the same seed.
    """

    def __init__(self, device: torch.device):
        self.device_gen = None if device.type == "cpu" else torch.Generator(device=device)

    def __call__(self, step_gen: torch.Generator) -> torch.Generator:
        if self.device_gen is None:
            return step_gen
        return self.device_gen.manual_seed(int(torch.randint(2**62, (1,), generator=step_gen)))


@dataclass
class BatchPlan:
    """Which images each rank and micro-batch of a step uses: epochs are seeded permutations of
    the training indices, walked in order by the global batch."""

    indices: list[int]
    per_rank: int
    accum: int
    world_size: int
    seed: int
    _perms: dict[int, list[int]] = field(default_factory=dict)

    @property
    def global_batch(self) -> int:
        return self.per_rank * self.accum * self.world_size

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            self._perms = {epoch: [self.indices[i] for i in torch.randperm(
                len(self.indices), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            ).tolist()]}
        return self._perms[epoch]

    def batch(self, step: int, micro: int, rank: int) -> list[int]:
        start = step * self.global_batch + (micro * self.world_size + rank) * self.per_rank
        n = len(self.indices)
        return [self._perm(p // n)[p % n] for p in range(start, start + self.per_rank)]

    def position(self, step: int) -> dict[str, int]:
        """Epoch and offset reached after ``step`` steps (for the state file)."""
        done = step * self.global_batch
        return {"epoch": done // len(self.indices), "offset": done % len(self.indices)}


def pick_captions(data: TrainingSet, indices: list[int], gen: torch.Generator,
                  dropout: float = 0.0) -> list[str]:
    """One caption per image, drawn at random; with probability ``dropout`` the empty prompt."""
    captions = []
    for i in indices:
        options = data.captions[i]
        choice = options[int(torch.randint(len(options), (1,), generator=gen))]
        drop = dropout > 0 and torch.rand((), generator=gen).item() < dropout
        captions.append("" if drop else choice)
    return captions


def pick_negatives(data: TrainingSet, indices: list[int], captions: list[str], sigma: torch.Tensor,
                   sigma_min: float, gen: torch.Generator) -> tuple[list[int], list[str]]:
    """The batch rows that take part in the caption contrast and one negative caption for each,
    drawn at random: rows whose image has negatives, whose caption was not dropped, and whose
    noise level is at least ``sigma_min`` (below it the noisy picture already shows where each
    object is, and no caption can change that)."""
    rows, negatives = [], []
    levels = sigma.tolist()  # one device sync, not one per row
    for row, (i, caption) in enumerate(zip(indices, captions)):
        options = data.negatives_of(i)
        if options and caption and levels[row] >= sigma_min:
            rows.append(row)
            negatives.append(options[int(torch.randint(len(options), (1,), generator=gen))])
    return rows, negatives


def image_batch(data: TrainingSet, indices: list[int], device: torch.device) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] on ``device``."""
    return from_uint8(data.images[indices].to(device, non_blocking=True))


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up, then constant (EDM's schedule; the EMA does the averaging)."""
    return base_lr * min(1.0, (step + 1) / max(1, warmup_steps))


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The EMA decay after ``step``: ``decay``, ramped up from 0 over the first steps with ``warmup``
    (right for a fresh network; a run from a trained checkpoint keeps averaging from it)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def cosine_lr(step: int, total: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% (used for the short CLIP stage)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
