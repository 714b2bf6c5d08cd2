"""The sampling pipeline: prompts -> per-image seeds -> batches -> images.

Reproducibility (docs/ARCHITECTURE.md): image k of a run gets seed ``seed + k``; its starting noise and every
ancestral noise draw come from its own CPU ``torch.Generator``. So the same seed gives the same
image whatever the batch size, and on CPU and GPU alike up to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from diffgen import __version__
from diffgen.engine.edit import keep_known, sdedit_sigmas, sdedit_start, steps_to_run
from diffgen.engine.guidance import Denoise, classifier_free_guidance
from diffgen.engine.model import DiffusionModel, PromptCache
from diffgen.engine.samplers import SAMPLERS, seeded_noise_sampler
from diffgen.engine.schedule import SCHEDULES
from diffgen.errors import InputError
from diffgen.sampling.edits import EditSource
from diffgen.sampling.images import image_filename
from diffgen.sampling.prompts import PromptSpec
from diffgen.sampling.settings import A1111_SAMPLER_LABELS, DEFAULTS, SamplingSettings


@dataclass(frozen=True)
class ImageTask:
    """Everything that determines one image (its recipe, minus the model)."""

    index: int
    prompt: str
    seed: int
    negative: str = DEFAULTS.negative
    steps: int = DEFAULTS.steps
    sampler: str = DEFAULTS.sampler
    schedule: str = DEFAULTS.schedule
    guidance: float = DEFAULTS.guidance
    edit: EditSource | None = None  # image-to-image / inpainting inputs

    @classmethod
    def of(cls, index: int, prompt: str, seed: int, settings: SamplingSettings = DEFAULTS,
           edit: EditSource | None = None) -> ImageTask:
        """The task for image ``index`` of ``prompt`` from ``seed`` with ``settings``."""
        return cls(index, prompt, seed, settings.negative, settings.steps, settings.sampler, settings.schedule,
                   settings.guidance, edit)

    @property
    def sampler_steps(self) -> int:
        """Steps the sampler runs: all of them, or image-to-image's share of them."""
        return self.steps if self.edit is None else steps_to_run(self.steps, self.edit.strength)

    @property
    def settings(self) -> SamplingSettings:
        return SamplingSettings(self.steps, self.sampler, self.schedule, self.guidance, self.negative)

    @property
    def filename(self) -> str:
        return image_filename(self.index, self.seed, self.prompt)

    def batch_key(self) -> tuple:
        """Tasks with equal keys can share a batch (same step count, sampler, guidance and edit)."""
        return (self.steps, self.sampler, self.schedule, self.guidance, self.edit)

    def validate(self) -> ImageTask:
        """This task with checked settings (the sampler's registry name); InputError if it cannot run."""
        if not isinstance(self.prompt, str):
            raise InputError(f"prompt must be text, got {self.prompt!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be a whole number in [0, 2^63), got {self.seed!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise InputError(f"index must be a whole number >= 0, got {self.index!r}")
        edit = self.edit.validate() if self.edit is not None else None
        return ImageTask.of(self.index, self.prompt, self.seed, self.settings.validate(), edit)


def iter_tasks(specs: Iterable[PromptSpec], seed: int, defaults: ImageTask, first_index: int = 0
               ) -> Iterator[ImageTask]:
    """Number images across prompts and repeats, lazily: image k gets seed + k unless its prompt
    has a seed of its own (then image j of that prompt gets prompt_seed + j). Its file index is
    ``first_index + k`` (a new run into a used folder numbers on after the existing images)."""
    k = 0
    for spec in specs:
        settings = replace(defaults, **spec.overrides).validate()  # checked once per prompt
        for j in range(spec.num_images):
            image_seed = (spec.seed + j) if spec.seed is not None else seed + k
            task = replace(settings, index=first_index + k, prompt=spec.prompt, seed=image_seed)
            if j in (0, spec.num_images - 1):  # the seed range is checked at both ends
                task.validate()
            yield task
            k += 1


def plan_tasks(specs: list[PromptSpec], seed: int, defaults: ImageTask) -> list[ImageTask]:
    """``iter_tasks`` as a list (for runs whose images are kept in memory anyway)."""
    return list(iter_tasks(specs, seed, defaults))


@dataclass(frozen=True)
class SamplePlan:
    """What one ``diffgen sample`` run makes: how many images and sampler steps, the first seed
    (drawn at random when none was given), for ``--replay`` the recipe it replays, and the tasks
    themselves, produced lazily so that memory does not grow with -n or the prompt file."""

    specs: Callable[[], Iterator[PromptSpec]]  # a fresh pass over the prompts (a file is read again)
    defaults: ImageTask
    count: int
    total_steps: int
    seed: int | None
    random_seed: bool
    replay: dict[str, Any] | None = None

    fixed: tuple[ImageTask, ...] | None = None  # a setting grid's cells, planned in full
    first_index: int = 0

    def tasks(self) -> Iterator[ImageTask]:
        if self.fixed is not None:
            return iter(self.fixed)
        if self.replay is not None:
            return iter([task_from_recipe(self.replay)])
        return iter_tasks(self.specs(), self.seed, self.defaults, self.first_index)


def plan_sample(prompts: list[str], prompt_file: Path | None, replay: Path | None, num_images: int,
                seed: int | None, settings: SamplingSettings, edit: EditSource | None = None) -> SamplePlan:
    """The plan of a run from prompt arguments and/or a prompt file, or from a PNG's recipe.

    Every prompt and setting is checked here, in one pass that keeps only counts, before any
    model is loaded. A replay regenerates one recipe exactly, so it cannot be combined with
    prompts (they would be dropped otherwise)."""
    import itertools
    import secrets

    from diffgen.sampling.images import read_recipe
    from diffgen.sampling.prompts import iter_prompt_file

    if replay is not None:
        if prompts or prompt_file is not None or edit is not None:
            raise InputError("--replay regenerates the image's own prompt and inputs: drop the prompts, -f "
                             "and --init-image")
        recipe_data = read_recipe(replay)
        task = task_from_recipe(recipe_data)
        return SamplePlan(lambda: iter(()), task, 1, task.steps, None, False, recipe_data)

    def specs() -> Iterator[PromptSpec]:
        return itertools.chain((PromptSpec(p, num_images) for p in prompts),
                               iter_prompt_file(prompt_file, num_images) if prompt_file is not None else ())

    first = secrets.randbelow(2**31) if seed is None else seed
    defaults = ImageTask.of(0, "", 0, settings, edit)
    count = total_steps = 0
    for spec in specs():
        if not spec.prompt.strip():
            raise InputError("empty prompt given; use --negative for what to avoid")
        spec_tasks = iter_tasks([spec], first + count, defaults)  # checks the prompt's settings and seeds
        steps = next(spec_tasks).sampler_steps
        if spec.seed is not None and spec.seed + spec.num_images > 2**63:
            raise InputError(f"seed {spec.seed} + {spec.num_images} images runs past the largest seed (2^63 - 1)")
        count += spec.num_images
        total_steps += spec.num_images * steps
    if count == 0:
        if prompt_file is not None and not prompts:
            raise InputError(f"prompt file {prompt_file} has no prompts (only blank or # lines)")
        raise InputError("no prompt given: pass PROMPT ..., -f PROMPT_FILE or --replay IMAGE.png")
    if first + count > 2**63:
        raise InputError(f"--seed {first} + {count} images runs past the largest seed (2^63 - 1)")
    return SamplePlan(specs, defaults, count, total_steps, first, seed is None)


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


def batches(tasks: Iterable[ImageTask], batch_size: int) -> Iterator[list[ImageTask]]:
    """Consecutive runs of compatible tasks, at most ``batch_size`` each (a short last batch is fine)."""
    batch: list[ImageTask] = []
    for task in tasks:
        if batch and (len(batch) == batch_size or task.batch_key() != batch[0].batch_key()):
            yield batch
            batch = []
        batch.append(task)
    if batch:
        yield batch


# Where an image was computed: CPU kernels choose their blocking by batch size, so the same image
# computed in a batch of 4 and alone can differ by one level in a few channel values. Recording
# the batch's size and the image's row lets --replay recompute it exactly (see placement_of).
PLACEMENT_KEYS = ("batch_size", "batch_row")
# Recipe entries that do not change the picture (recipes written before they existed lack them).
_NOT_THE_PICTURE = PLACEMENT_KEYS + ("model_file_sha256",)
MAX_REPLAY_BATCH = 4096


def recipe(task: ImageTask, model: DiffusionModel, model_name: str,
           placement: tuple[int, int] | None = None) -> dict[str, Any]:
    """The JSON recipe stored in each PNG; ``--replay`` rebuilds the task (and, with
    ``placement`` = (batch size, row), the batch it was computed in) from it."""
    size = model.config.image_size
    fields = asdict(task)
    if task.edit is None:
        del fields["edit"]
    return {
        **fields,
        "sampler_label": A1111_SAMPLER_LABELS.get(task.sampler, task.sampler),
        "width": size,
        "height": size,
        "model": model_name,
        "model_hash": model.content_hash or "",
        "model_file_sha256": getattr(model, "file_sha256", None) or "",
        "version": __version__,
        **(dict(zip(PLACEMENT_KEYS, placement)) if placement is not None else {}),
    }


def same_image(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two recipes describe the same image (where in a batch it was computed aside)."""
    return {k: v for k, v in a.items() if k not in _NOT_THE_PICTURE} == \
        {k: v for k, v in b.items() if k not in _NOT_THE_PICTURE}


def placement_of(data: dict[str, Any]) -> tuple[int, int] | None:
    """(batch size, row) recorded in a recipe, checked; None for recipes that do not record it."""
    if not all(k in data for k in PLACEMENT_KEYS):
        return None
    size, row = (data[k] for k in PLACEMENT_KEYS)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (size, row)) \
            or not (1 <= size <= MAX_REPLAY_BATCH and 0 <= row < size):
        raise InputError(f"the diffgen recipe has a damaged batch placement ({size!r}, {row!r})")
    return size, row


def task_from_recipe(data: dict[str, Any]) -> ImageTask:
    """Rebuild an ImageTask from a stored recipe, refusing incomplete ones."""
    fields = [k for k in ImageTask.__dataclass_fields__ if k != "edit"]
    try:
        edit = EditSource.from_recipe(data["edit"]) if data.get("edit") is not None else None
        task = ImageTask(**{k: data[k] for k in fields}, edit=edit).validate()
    except (KeyError, TypeError) as exc:
        raise InputError(f"the diffgen recipe is incomplete or damaged ({exc})") from None
    placement_of(data)
    return task


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
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    for batch in batches(tasks, batch_size):
        first = batch[0]
        generators = [torch.Generator().manual_seed(t.seed) for t in batch]
        sigmas = SCHEDULES[first.schedule](first.steps, model.denoiser.sigma_min, model.denoiser.sigma_max)
        noise = torch.stack([torch.randn(channels, size, size, generator=g) for g in generators])
        x = (noise * sigmas[0].item()).to(device)
        denoise = classifier_free_guidance(
            model.denoiser, text([t.prompt for t in batch]), text([t.negative for t in batch]),
            first.guidance)
        if first.edit is not None:  # batch_key: every task of the batch has the same edit settings
            x, sigmas, denoise, known = _start_edit(batch, noise, sigmas, denoise, size, device)
            if len(sigmas) == 1:  # strength 0: no step runs, the input comes back
                for row, task in enumerate(batch):
                    yield task, known[row].float().cpu(), ([] if trajectory else None)
                continue
        if device.type == "cpu":
            denoise = channels_last(denoise)
        frames: list[torch.Tensor] = []

        def callback(step: dict) -> None:
            if trajectory:
                frames.append(step["denoised"].float().cpu())
            if on_step is not None:
                on_step(len(batch))

        with torch.inference_mode(), autocast:
            out = SAMPLERS[first.sampler](denoise, x, sigmas, seeded_noise_sampler(generators, x),
                                          callback)
        out = out.float().cpu().contiguous()
        for row, task in enumerate(batch):
            yield task, out[row], ([f[row] for f in frames] if trajectory else None)


def _start_edit(batch: list[ImageTask], noise: torch.Tensor, sigmas: torch.Tensor, denoise: Denoise, size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Denoise, torch.Tensor]:
    """Image-to-image and inpainting (engine/edit.py): the starting point, the tail of the
    schedule that runs, and the denoiser that keeps a mask's known region."""
    loaded = [t.edit.load(size) for t in batch]
    known = torch.stack([image for image, _ in loaded]).to(device)
    edit = batch[0].edit
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
    batch_size: int = 8, overwrite: bool = False, trajectory: bool = False,
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


def next_free_index(out_dir: Path) -> int:
    """One past the highest image index in ``out_dir`` (files named ``{index:05d}-...png``)."""
    import re

    indices = [int(m[1]) for p in out_dir.glob("*.png") if (m := re.match(r"^(\d{5,})-", p.name))]
    return max(indices, default=-1) + 1
