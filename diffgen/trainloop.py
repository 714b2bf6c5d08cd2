"""Pieces both training stages share: deterministic batches, per-step generators, the run log.

Every random draw of step s (which images, which caption, caption dropout, noise levels, noise)
comes from a generator seeded by (seed, stage, step, rank). With the global RNG state saved too,
a resumed run repeats exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffgen.data import TrainingSet
from diffgen.fileio import atomic_write
from diffgen.trainstate import STAGE_ORDER


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


class PendingLosses:
    """Losses of recent steps kept on the device and read back together every ``every`` steps.

    Reading a GPU loss each step stalls the host until the step finishes, so the next step cannot
    be queued while this one runs; batching the reads keeps the GPU fed. On the CPU ``every`` is 1.
    """

    def __init__(self, every: int):
        self.every = every
        self.rows: list[tuple[int, float, torch.Tensor]] = []

    def add(self, step: int, lr: float, loss: torch.Tensor) -> None:
        self.rows.append((step, lr, loss.detach().reshape(())))

    def due(self) -> bool:
        return len(self.rows) >= self.every

    def flush(self, mean_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> list[tuple[int, float, float]]:
        """(step, lr, loss averaged over ranks) for every pending step, with one host sync."""
        if not self.rows:
            return []
        values = mean_over_ranks(torch.stack([loss for _, _, loss in self.rows])).tolist()
        out = [(step, lr, value) for (step, lr, _), value in zip(self.rows, values)]
        self.rows = []
        return out


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


def image_batch(data: TrainingSet, indices: list[int], device: torch.device) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] on ``device``."""
    return data.images[indices].to(device, non_blocking=True).float() / 127.5 - 1


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up, then constant (EDM's schedule; the EMA does the averaging)."""
    return base_lr * min(1.0, (step + 1) / max(1, warmup_steps))


def cosine_lr(step: int, total: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% (used for the short CLIP stage)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class RunLog:
    """metrics.jsonl plus a loss curve; on resume, lines past the resumed step are dropped so the
    file always describes one consistent run."""

    def __init__(self, folder: Path, enabled: bool, resume_from: tuple[str, int] | None = None):
        self.path = folder / "metrics.jsonl"
        self.enabled = enabled
        self.rows: list[dict] = []
        if enabled and self.path.exists():
            if resume_from is not None:
                keep = (STAGE_ORDER[resume_from[0]], resume_from[1])
                for line in self.path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill
                    if (STAGE_ORDER[row["stage"]], row["step"]) <= keep:
                        self.rows.append(row)
            text = "".join(json.dumps(r) + "\n" for r in self.rows)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def loss_curve(self, path: Path) -> None:
        if not self.enabled:
            return
        from diffgen.images import save_png
        from diffgen.plots import line_chart

        series = {}
        for stage in ("clip", "diffusion"):
            rows = [r for r in self.rows if r["stage"] == stage]
            if rows:
                series[f"{stage} loss"] = ([r["step"] for r in rows], [r["loss"] for r in rows])
        if series:
            save_png(line_chart(series, "training loss (per step, and smoothed)", smooth=0.98), path)


class Throughput:
    """Images per second since the stage started (or resumed)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.images = 0

    def add(self, images: int) -> float:
        self.images += images
        return self.images / max(1e-9, time.perf_counter() - self.start)


@contextmanager
def maybe_no_sync(module: torch.nn.Module, skip_sync: bool) -> Iterator[None]:
    """DDP's no_sync for all but the last micro-batch of a step (gradient accumulation)."""
    if skip_sync and hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    else:
        yield
