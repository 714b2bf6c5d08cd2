"""The sampling pipeline: tasks (sampling/tasks.py) -> batches -> images -> PNGs.

Reproducibility (docs/ARCHITECTURE.md): image k of a run gets seed ``seed + k``; its starting noise
and every ancestral noise draw come from its own CPU ``torch.Generator``. So the same seed gives the
same image whatever the batch size (up to one level in a few values on CPUs; the recipe records the
batch, and a replay recomputes it there), and on CPU and GPU alike up to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from diffgen.engine.consistency import AttachedStudent, sample_consistency
from diffgen.engine.edit import keep_known, sdedit_sigmas, sdedit_start
from diffgen.engine.guidance import Denoise, classifier_free_guidance
from diffgen.engine.layout_bias import LayoutBias, laid_out
from diffgen.engine.model import DiffusionModel, PromptCache
from diffgen.engine.pixels import require_finite
from diffgen.engine.regions import Placement, TokenSpans
from diffgen.engine.samplers import SAMPLERS, Sampler, seeded_noise_sampler
from diffgen.engine.schedule import SCHEDULES
from diffgen.engine.upscaler import upscale, upscale_generator
from diffgen.errors import InputError
from diffgen.sampling.edits import EditSource
from diffgen.sampling.layout import DEFAULT_LAYOUT_STRENGTH
from diffgen.sampling.predicted_layout import PredictedLayout, predict_layout
from diffgen.sampling.settings import DEFAULT_BATCH_SIZE, FAST_UPSCALE_STEPS
from diffgen.sampling.tasks import ImageTask, batches, recipe, same_image, upscales


def write_grid(results: list[ImageResult], out_dir: Path) -> Path:
    """One labelled grid (prompt and seed under each image) of a run's images, next to them."""
    from PIL import Image

    from diffgen.sampling.images import labelled_grid, save_png

    images = []
    for result in results:
        with Image.open(result.path) as image:
            images.append(image.convert("RGB"))
    first = results[0].task
    path = out_dir / f"grid-{first.index:05d}-{first.seed}.png"
    save_png(labelled_grid(images, [f"{r.task.prompt} ({r.task.seed})" for r in results]), path)
    return path


def generate_at(model: DiffusionModel, task: ImageTask, placement: tuple[int, int], trajectory: bool = False,
                on_step: StepCallback | None = None) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """``task``'s image computed at row ``row`` of a batch of ``size`` (the other rows compute the
    same task and are discarded): the exact bytes of an image first made in such a batch."""
    size, row = placement
    one_image = (lambda n: on_step(n // size)) if on_step is not None else None  # progress counts this image
    for k, (_, image, frames) in enumerate(generate(model, [task] * size, size, one_image, trajectory)):
        if k == row:
            return image, frames
    raise AssertionError("unreachable: generate yields one image per task")


StepCallback = Callable[[int], None]


def channels_last(denoise: Denoise) -> Denoise:
    """``denoise`` fed channels-last (NHWC) images: oneDNN's CPU convolutions run faster on them
    (15% less time per image for the 64 px default model, docs/BENCHMARKS.md). On CUDA the
    training benchmark found channels-last slower, so it is used on the CPU only."""
    return lambda x, sigma: denoise(x.contiguous(memory_format=torch.channels_last), sigma)


def generate(
    model: DiffusionModel, tasks: list[ImageTask], batch_size: int,
    on_step: StepCallback | None = None, trajectory: bool = False,
) -> Iterator[tuple[ImageTask, torch.Tensor, list[torch.Tensor] | None]]:
    """Yield (task, image (3,H,W) in [-1,1] on CPU, per-step x0 estimates or None) in task order.

    ``on_step(n)`` is called after each sampler step with the number of images it advanced.
    """
    device = model.device
    cfg = model.config
    size = cfg.image_size
    channels = cfg.unet.in_channels
    text = PromptCache(model.text_encoder, weighted=True)
    text.encode_all([t.prompt for t in tasks] + [t.negative for t in tasks])
    predicted: dict[str, PredictedLayout | None] = {}  # by prompt, read once
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    for batch in batches(tasks, batch_size):
        first = batch[0]
        generators = [torch.Generator().manual_seed(t.seed) for t in batch]
        net: torch.nn.Module = model.denoiser.net
        sampler: Sampler
        if first.fast:  # batch_key: every task of the batch is fast when the first is
            student = _student(model)
            sigmas = student.sigmas(first.steps)
            denoise = student.denoiser(text([t.prompt for t in batch]), first.guidance)
            net, sampler = student.student.net, sample_consistency  # the layout bias goes into its attention
        else:
            sampler = SAMPLERS[first.sampler]
            sigmas = SCHEDULES[first.schedule](first.steps, model.denoiser.sigma_min, model.denoiser.sigma_max)
            denoise = classifier_free_guidance(
                model.denoiser, text([t.prompt for t in batch]), text([t.negative for t in batch]),
                first.guidance)
        noise = torch.stack([torch.randn(channels, size, size, generator=g) for g in generators])
        x = (noise * sigmas[0].item()).to(device)
        upscaled = upscales(first, model)  # batch_key: every task of the batch asks the same
        if first.edit is not None:  # batch_key: every task of the batch has the same edit settings
            x, sigmas, denoise, known = _start_edit(batch, noise, sigmas, denoise, size, device)
            if len(sigmas) == 1:  # strength 0: no step runs, the input comes back (at the output's size)
                if upscaled and min(_image_size(first.edit.init_image)) >= 2 * size:
                    known = torch.stack([cast(EditSource, t.edit).load(2 * size)[0] for t in batch])
                elif upscaled:  # a smaller input is enlarged as every base image is
                    with torch.inference_mode():
                        known = _upscale_batch(model, batch, known)
                for row, task in enumerate(batch):
                    yield task, known[row].float().cpu(), ([] if trajectory else None)
                continue
        if device.type == "cpu":
            denoise = channels_last(denoise)
        layout = _layout_bias(model, batch, predicted)
        frames: list[torch.Tensor] = []

        def callback(step: dict) -> None:
            if trajectory:
                frames.append(step["denoised"].float().cpu())
            if on_step is not None:
                on_step(len(batch))

        with torch.inference_mode(), autocast, laid_out(net, denoise, layout) \
                if layout is not None else contextlib.nullcontext(denoise) as denoise:
            out = sampler(denoise, x, sigmas, seeded_noise_sampler(generators, x), callback)
            if upscaled:
                out = _upscale_batch(model, batch, out)
        out = out.float().cpu().contiguous()
        for row, task in enumerate(batch):  # the whole batch checked before any of it is written
            require_finite(out[row], f"{task.prompt[:40]!r} (seed {task.seed})")
        for row, task in enumerate(batch):
            yield task, out[row], ([f[row] for f in frames] if trajectory else None)


def _student(model: DiffusionModel) -> AttachedStudent:
    """The model's distilled student (diffgen/students.py attaches it); InputError without one."""
    if model.student is None:
        raise InputError(f"fast sampling needs a distilled student, and model {model.display_name} has none "
                         "attached (diffgen train --distill makes one; docs/DISTILL.md)")
    return model.student


def _upscale_batch(model: DiffusionModel, batch: list[ImageTask], images: torch.Tensor) -> torch.Tensor:
    """The batch's base images (B, 3, S, S) enlarged to (B, 3, 2S, 2S) by the model's upscaler.

    The upscaler sees each base image as its PNG would hold it (rounded to 8-bit levels), so
    ``diffgen upscale`` of a ``--no-upscale`` PNG gives the same picture; its noise comes from the
    image's own upscale generator (``upscale_generator(seed)``), apart from the base image's draws.
    Inpainting with an input of at least the 2x size keeps its known region: the input at that
    size where the mask keeps it (a smaller input's kept region is the upscaler's, from the same
    pixels the base image kept)."""
    assert model.upscaler is not None
    levels = ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    # batch_key: every task of the batch is fast when the first is
    steps = FAST_UPSCALE_STEPS if batch[0].fast else None  # None: the upscaler's own
    high = upscale(model.upscaler, levels, [upscale_generator(t.seed) for t in batch], steps=steps)
    edit = batch[0].edit
    if edit is not None and edit.mask and min(_image_size(edit.init_image)) >= high.shape[-1]:
        loaded = [cast(EditSource, t.edit).load(high.shape[-1]) for t in batch]  # batch_key: all have one
        known = torch.stack([image for image, _ in loaded]).to(high.device)
        mask = torch.stack([m for _, m in loaded]).to(high.device)
        high = mask * high + (1 - mask) * known
    return high


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _layout_bias(model: DiffusionModel, batch: list[ImageTask], predicted: dict[str, PredictedLayout | None]
                 ) -> LayoutBias | None:
    """The attention bias of the batch's layouts, given or predicted (rows without one get none),
    or None if no task has one. Tasks of one batch share the layout strength (ImageTask.batch_key);
    ``predicted`` caches the predictor's layout of each prompt."""

    placements: list[list[Placement]] = []
    for task in batch:
        if task.layout is not None:
            placements.append(task.layout.placements(task.prompt))
        elif task.auto_layout:
            if task.prompt not in predicted:
                predicted[task.prompt] = predict_layout(model, task.prompt)
            guess = predicted[task.prompt]
            placements.append(guess.placements(task.seed) if guess is not None else [])
        else:
            placements.append([])
    if not any(placements):
        return None
    text = model.text_encoder
    strength = next((t.layout.strength for t in batch if t.layout is not None), DEFAULT_LAYOUT_STRENGTH)
    return LayoutBias.of([t.prompt for t in batch], placements, TokenSpans(text.tokenizer, text.context_length),
                         strength, model.device)


def _start_edit(batch: list[ImageTask], noise: torch.Tensor, sigmas: torch.Tensor, denoise: Denoise, size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Denoise, torch.Tensor]:
    """Image-to-image and inpainting (engine/edit.py): the starting point, the tail of the
    schedule that runs, and the denoiser that keeps a mask's known region."""
    # batch_key: every task of the batch has an edit when the first has
    loaded = [cast(EditSource, t.edit).load(size) for t in batch]
    known = torch.stack([image for image, _ in loaded]).to(device)
    edit = batch[0].edit
    assert edit is not None
    sigmas = sdedit_sigmas(sigmas, edit.strength)
    if edit.mask:
        mask = torch.stack([m for _, m in loaded]).to(device)
        denoise = keep_known(denoise, known, mask)
    noise = noise.to(device)
    # strength 1 without a mask starts from pure noise like text-to-image: the input does not matter
    start = noise * sigmas[0].item() if edit.strength == 1 and not edit.mask else \
        sdedit_start(known, noise, sigmas[0].item())
    return start, sigmas, denoise, known


@dataclass(frozen=True)
class ImageResult:
    """One image of a run: where it is, how long it took, whether it was already there."""

    task: ImageTask
    path: Path
    seconds: float
    skipped: bool
    trajectory_path: Path | None = None


def write_images(
    model: DiffusionModel, tasks: Iterable[ImageTask], out_dir: Path, model_name: str,
    batch_size: int = DEFAULT_BATCH_SIZE, overwrite: bool = False, trajectory: bool = False,
    on_step: StepCallback | None = None, replay_placement: tuple[int, int] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[ImageResult]:
    """Generate ``tasks`` into ``out_dir`` as PNGs with recipes; existing files are skipped unless
    ``overwrite``, so an interrupted run resumes where it stopped. Yields results in task order.
    Tasks are taken a batch at a time, so any number of them runs in constant memory. Each recipe
    records the batch size and row the image was computed at; ``replay_placement`` recomputes a
    single replayed task at that place, so the replay is byte-identical. ``shard`` = (rank, world
    size) takes every world-size-th batch (torchrun): each image is computed in the same batch as
    in one process, so N processes write the same files, byte for byte, as one."""
    import time

    from diffgen.sampling.images import read_recipe, save_png, to_pil, trajectory_strip

    clock = time.perf_counter()
    rank, world = shard
    for number, chunk in enumerate(batches(tasks, batch_size)):
        if number % world != rank:
            continue
        todo = [t for t in chunk if overwrite or not (out_dir / t.filename).exists()]
        done = {t.index for t in chunk} - {t.index for t in todo}
        for task in chunk:  # a file is only "done" if it was made by the same recipe
            if task.index in done and not same_image(read_recipe(out_dir / task.filename),
                                                     recipe(task, model, model_name)):
                raise InputError(f"{out_dir / task.filename} exists but was made with other settings or "
                                 "another model: add --new-run to number the new images after the existing "
                                 "ones, --overwrite to replace them, or choose another -o folder")
        # todo is one batch of compatible tasks (a chunk is), so each image's place in it is known
        if replay_placement is not None and len(todo) == 1:
            pending = iter([(todo[0], *generate_at(model, todo[0], replay_placement, trajectory, on_step))])
            placements = {todo[0].index: replay_placement}
        else:
            pending = iter(generate(model, todo, batch_size, on_step, trajectory))
            placements = {t.index: (len(todo), row) for row, t in enumerate(todo)}
        for task in chunk:
            if task.index in done:
                yield ImageResult(task, out_dir / task.filename, 0.0, skipped=True)
                continue
            _, image, frames = next(pending)
            path = out_dir / task.filename
            save_png(to_pil(image[None])[0], path, recipe(task, model, model_name, placements[task.index]))
            strip_path = None
            if frames is not None:
                strip_path = path.with_name(path.stem + "-trajectory.png")
                save_png(trajectory_strip(to_pil(torch.stack(frames))), strip_path)
            now = time.perf_counter()
            yield ImageResult(task, path, now - clock, skipped=False, trajectory_path=strip_path)
            clock = now


