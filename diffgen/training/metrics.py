"""What a training run reports: losses per step (metrics.jsonl and a loss curve), the progress bar
with images/s, the time limit, and the CLIP stage's retrieval accuracy."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffgen import distributed
from diffgen.data import TrainingSet
from diffgen.fileio import atomic_write
from diffgen.state import STAGE_ORDER
from diffgen.training.batches import image_batch


class PendingLosses:
    """Losses of recent steps kept on the device and read back together every ``every`` steps.

    Reading a GPU loss each step stalls the host until the step finishes, so the next step cannot
    be queued while this one runs; batching the reads keeps the GPU fed. On the CPU ``every`` is 1.
    A step may carry named parts of its loss (e.g. the caption contrast), read back with it.
    """

    def __init__(self, every: int):
        self.every = every
        self.rows: list[tuple[int, float, tuple[str, ...], torch.Tensor]] = []

    def add(self, step: int, lr: float, loss: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> None:
        parts = parts or {}
        values = torch.stack([loss.detach().reshape(()), *(v.detach().reshape(()) for v in parts.values())])
        self.rows.append((step, lr, tuple(parts), values))

    def due(self) -> bool:
        return len(self.rows) >= self.every

    def flush(self, mean_over_ranks: Callable[[torch.Tensor], torch.Tensor]
              ) -> list[tuple[int, float, float, dict[str, float]]]:
        """(step, lr, loss, {part: value}) averaged over ranks for every pending step, with one host sync."""
        if not self.rows:
            return []
        # one stage's steps all log the same parts, so their values stack into one table
        table = mean_over_ranks(torch.stack([values for *_, values in self.rows])).tolist()
        out = [(step, lr, row[0], dict(zip(names, row[1:])))
               for (step, lr, names, _), row in zip(self.rows, table)]
        self.rows = []
        return out


class RunLog:
    """metrics.jsonl plus a loss curve; on resume, lines past the resumed step are dropped so the
    file always describes one consistent run."""

    def __init__(self, folder: Path, enabled: bool, resume_from: tuple[str, int] | None = None):
        self.path = folder / "metrics.jsonl"
        self.enabled = enabled
        self.rows: list[dict] = []
        if enabled and (self.path.exists() or self.path.is_symlink()):  # a link is replaced, never written through
            if resume_from is not None and not self.path.is_symlink():
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
        # O_NOFOLLOW: a link planted here since the run began is refused, never appended through
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with open(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def curves(self) -> dict[str, tuple[list[float], list[float]]]:
        """Each stage's loss by step, and the extra terms a stage logs beside its loss (the caption
        contrast's ``contrast``, the grounding loss's ``grounding``), whose scale the total hides."""
        series: dict[str, tuple[list[float], list[float]]] = {}
        for stage in ("clip", "diffusion", "layout", "upscale", "adapter", "distill"):
            rows = [r for r in self.rows if r["stage"] == stage]
            if rows:
                series[f"{stage} loss"] = ([r["step"] for r in rows], [r["loss"] for r in rows])
            for term in ("contrast", "grounding", "prior"):
                with_term = [r for r in rows if term in r]
                if with_term:
                    series[f"{stage} {term}"] = ([r["step"] for r in with_term], [r[term] for r in with_term])
        return series

    def loss_curve(self, path: Path) -> None:
        if not self.enabled:
            return
        from diffgen.plots import line_chart
        from diffgen.sampling.images import save_png

        series = self.curves()
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


class StageMeter:
    """Progress bar, metrics.jsonl rows and images/s for one stage, fed in batches of steps.

    On a GPU the losses are read back every ``GPU_LOG_EVERY`` steps (see PendingLosses)."""

    GPU_LOG_EVERY = 25

    def __init__(self, stage: str, total: int, start: int, images_per_step: int, log: RunLog,
                 dist: distributed.DistInfo, device: torch.device, show_progress: bool,
                 deadline: float | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from diffgen.progress import progress

        self.stage, self.images_per_step, self.log, self.dist, self.device = stage, images_per_step, log, dist, device
        self.deadline = deadline  # time.perf_counter() value after which the run stops
        self.pending = PendingLosses(1 if device.type == "cpu" else self.GPU_LOG_EVERY)
        self.speed = Throughput()
        self.smoothed: float | None = None
        self.progress = progress(stage, TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} img/s"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[budget]}"),
                                 fields=("loss", "rate", "budget"), disable=not (show_progress and dist.is_main))
        self.bar = self.progress.add_task(stage, total=total, completed=start, loss="-", rate="-",
                                          budget=self._time_left())

    def _time_left(self) -> str:
        """What remains of the stage's time (its budget or the time limit), for the progress line."""
        if self.deadline is None:
            return ""
        return f"{max(0.0, self.deadline - time.perf_counter()) / 60:.1f} min left"

    def retotal(self, total: int) -> None:
        """The stage's step count changed (a budget planned it)."""
        self.progress.update(self.bar, total=total)

    def add(self, step: int, lr: float, loss: torch.Tensor, parts: dict[str, torch.Tensor] | None = None,
            force: bool = False) -> None:
        """Record step ``step``'s loss (and its named parts); write out the pending steps when due or ``force``."""
        self.pending.add(step, lr, loss, parts)
        if force or self.pending.due():
            self.flush()

    def flush(self) -> None:
        rows = self.pending.flush(lambda v: distributed.all_reduce_mean(v, self.dist))
        if not rows:
            return
        rate = self.speed.add(self.images_per_step * len(rows))
        for step, lr, loss, parts in rows:
            self.smoothed = loss if self.smoothed is None else 0.98 * self.smoothed + 0.02 * loss
            self.log.write({"stage": self.stage, "step": step, "loss": loss, **parts, "lr": lr, "images_per_s": rate})
        self.progress.update(self.bar, advance=len(rows), loss=f"{self.smoothed:.4f}", rate=f"{rate:.1f}",
                             budget=self._time_left())

    def out_of_time(self) -> bool:
        """True on every rank once the deadline has passed (checked at flushes only)."""
        if self.deadline is None or self.pending.rows:
            return False
        return distributed.any_rank(time.perf_counter() >= self.deadline, self.dist, self.device)


@torch.no_grad()
def retrieval_accuracy(model, data: TrainingSet, indices: list[int], device: torch.device) -> dict[str, Any]:
    """Image-to-text retrieval over ``indices`` (first caption each): top-1/top-5 accuracy and the
    accuracy random ranking would get (higher than 1/N where captions repeat)."""
    clip = model.text_encoder.clip
    captions = [data.captions[i][0] for i in indices]
    image_features = torch.nn.functional.normalize(clip.encode_image(image_batch(data, indices, device)), dim=-1)
    ids = model.text_encoder.tokenize(captions)[0].to(device)
    text_features = torch.nn.functional.normalize(clip.encode_text(ids), dim=-1)
    ranking = (image_features @ text_features.T).argsort(dim=1, descending=True).cpu()
    n = len(captions)
    hits1 = hits5 = chance1 = chance5 = 0.0
    for row, own in enumerate(captions):
        same = sum(c == own for c in captions)
        hits1 += captions[ranking[row, 0]] == own
        hits5 += any(captions[j] == own for j in ranking[row, :5].tolist())
        chance1 += same / n
        miss5 = 1.0  # probability that 5 random picks without replacement all miss
        for k in range(min(5, n)):
            miss5 *= max(0.0, (n - same - k) / (n - k))
        chance5 += 1 - miss5
    return {"images": n, "top1": hits1 / n, "top5": hits5 / n, "chance_top1": chance1 / n,
            "chance_top5": chance5 / n}
