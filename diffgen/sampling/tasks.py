"""What determines one image (ImageTask), how a run numbers its images and seeds, how tasks are
batched, and the recipe each PNG carries.

Reproducibility (docs/ARCHITECTURE.md): image k of a run gets seed ``seed + k``; its starting noise
and every ancestral noise draw come from its own CPU generator.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from diffgen import __version__
from diffgen.engine.edit import steps_to_run
from diffgen.engine.prompt_weights import check_weights
from diffgen.errors import InputError
from diffgen.sampling.edits import EditSource
from diffgen.sampling.images import image_filename
from diffgen.sampling.layout import DEFAULT_LAYOUT_STRENGTH, Layout
from diffgen.sampling.prompts import PromptSpec
from diffgen.sampling.settings import A1111_SAMPLER_LABELS, DEFAULT_BATCH_SIZE, DEFAULTS, SamplingSettings

if TYPE_CHECKING:
    from diffgen.engine.model import DiffusionModel

# The longest prompt (and negative prompt): the text encoder reads the first 77 tokens, a few hundred
# characters. A megabyte of bracketed prompt (a recipe's) still took 33 s to parse and tokenize with
# the linear weight parser, every piece for nothing; the same as a prompt file's longest line.
MAX_PROMPT_CHARS = 20_000
# The largest image index: nine digits in a file name ({index:05d}-{seed}-{slug}.png), far from the
# 255-byte limit on names (a recipe or a file with a 250-digit index made every write fail).
MAX_INDEX = 999_999_999


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
    layout: Layout | None = None  # where named objects go (sampling/layout.py)
    # without a layout: lay out a prompt that names two or more objects with the model's layout
    # predictor, where it has one (sampling/predicted_layout.py)
    auto_layout: bool = True
    # enlarge the image with the model's upscaler (engine/upscaler.py), where it has one
    upscale: bool = True
    # sample with the model's distilled student (consistency sampling, one forward a step; the
    # sampler and schedule do not apply): engine/consistency.py
    fast: bool = False

    @classmethod
    def of(cls, index: int, prompt: str, seed: int, settings: SamplingSettings = DEFAULTS,
           edit: EditSource | None = None, layout: Layout | None = None, auto_layout: bool = True,
           upscale: bool = True, fast: bool = False) -> ImageTask:
        """The task for image ``index`` of ``prompt`` from ``seed`` with ``settings``."""
        return cls(index, prompt, seed, settings.negative, settings.steps, settings.sampler, settings.schedule,
                   settings.guidance, edit, layout, auto_layout, upscale, fast)

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
        """Tasks with equal keys can share a batch (same step count, sampler, guidance, edit, layout
        strength, upscale and fast; each image of a batch may have its own layout, or none)."""
        strength = (self.layout.strength if self.layout is not None
                    else DEFAULT_LAYOUT_STRENGTH if self.auto_layout else None)
        return (self.steps, self.sampler, self.schedule, self.guidance, self.edit, strength, self.upscale, self.fast)

    def validate(self) -> ImageTask:
        """This task with checked settings (the sampler's registry name); InputError if it cannot run."""
        if not isinstance(self.prompt, str):
            raise InputError(f"prompt must be text, got {self.prompt!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be a whole number in [0, 2^63), got {self.seed!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index <= MAX_INDEX:
            raise InputError(f"index must be a whole number from 0 to {MAX_INDEX:,}, got {self.index!r}")
        edit = self.edit.validate() if self.edit is not None else None
        layout = self.layout.validate(self.prompt) if self.layout is not None else None
        for flag in ("auto_layout", "upscale", "fast"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        settings = self.settings.validate()
        if self.fast and settings.negative:
            raise InputError("a negative prompt does not work with fast sampling: the student's guidance was "
                             "distilled against the empty prompt (drop the negative prompt, or fast)")
        for what, text in (("prompt", self.prompt), ("negative prompt", settings.negative)):
            if len(text) > MAX_PROMPT_CHARS:
                raise InputError(f"the {what} is {len(text):,} characters long; at most {MAX_PROMPT_CHARS:,} "
                                 "(the text encoder reads its first tokens only)")
            try:  # weights past float32's range made black images: refused here, before any run
                check_weights(text)
            except InputError as exc:
                raise InputError(f"{what}: {exc}") from None
        return ImageTask.of(self.index, self.prompt, self.seed, settings, edit, layout,
                            self.auto_layout, self.upscale, self.fast)


def iter_tasks(specs: Iterable[PromptSpec], seed: int, defaults: ImageTask, first_index: int = 0
               ) -> Iterator[ImageTask]:
    """Number images across prompts and repeats, lazily: image k gets seed + k unless its prompt
    has a seed of its own (then image j of that prompt gets prompt_seed + j). Its file index is
    ``first_index + k`` (a new run into a used folder numbers on after the existing images)."""
    k = 0
    for spec in specs:
        settings = replace(defaults, prompt=spec.prompt, **spec.overrides).validate()  # checked once per prompt
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
# Base-image pixels through the model at once: 32 images of 64 px (1.3 GB at most on the CPU for the
# default model, upscale included; 128 of them took 2.5 GB, and a recipe's batch of 4096 asked for
# tens). A run's --batch-size and a replayed recipe's batch are held to it, so every image made can
# be replayed in the batch it was made in.
MAX_BATCH_PIXELS = 32 * 64 * 64


def max_batch_size(image_size: int) -> int:
    """The most images of ``image_size`` px computed at once (never fewer than the default batch)."""
    return max(DEFAULT_BATCH_SIZE, min(MAX_REPLAY_BATCH, MAX_BATCH_PIXELS // image_size**2))


def recipe(task: ImageTask, model: DiffusionModel, model_name: str,
           placement: tuple[int, int] | None = None) -> dict[str, Any]:
    """The JSON recipe stored in each PNG; ``--replay`` rebuilds the task (and, with
    ``placement`` = (batch size, row), the batch it was computed in) from it."""
    size = model.config.image_size * (2 if upscales(task, model) else 1)
    fields = asdict(task)
    for optional in ("edit", "layout"):  # absent rather than null: older recipes stay the same image
        if fields[optional] is None:
            del fields[optional]
    if task.layout is not None:  # lists, as JSON reads them back, so that recipes compare equal
        fields["layout"] = {"places": [list(p) for p in task.layout.places], "strength": task.layout.strength}
    # where the flag changes nothing it is left out, so that older recipes stay the same image
    if task.layout is not None or not has_layout_predictor(model):
        del fields["auto_layout"]
    if model.upscaler is None:
        del fields["upscale"]
    if not task.fast:  # only fast images say so (with the student they were made by)
        del fields["fast"]
    elif (student := getattr(model, "student", None)) is not None:
        fields["student"] = student.recipe()
    return {
        **fields,
        # consistency sampling is what AUTOMATIC1111 calls its LCM sampler
        "sampler_label": "LCM" if task.fast else A1111_SAMPLER_LABELS.get(task.sampler, task.sampler),
        "width": size,
        "height": size,
        "model": model_name,
        "model_hash": model.content_hash or "",
        "model_file_sha256": getattr(model, "file_sha256", None) or "",
        "version": __version__,
        # only where adapters are attached, so that other recipes stay as they were
        **({"adapters": [dict(a) for a in model.adapters]} if getattr(model, "adapters", None) else {}),
        **(dict(zip(PLACEMENT_KEYS, placement)) if placement is not None else {}),
    }


def upscales(task: ImageTask, model: DiffusionModel) -> bool:
    """Whether ``task``'s image is enlarged: asked for, and the model has an upscaler."""
    return task.upscale and model.upscaler is not None


def has_layout_predictor(model: DiffusionModel) -> bool:
    """Whether ``model`` has a trained layout predictor (only then does ``auto_layout`` matter)."""
    return model.layout is not None and int(model.layout.trained_steps) > 0


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
    fields = [k for k in ImageTask.__dataclass_fields__
              if k not in ("edit", "layout", "auto_layout", "upscale", "fast")]
    try:
        edit = EditSource.from_recipe(data["edit"]) if data.get("edit") is not None else None
        layout = Layout.from_recipe(data["layout"]) if data.get("layout") is not None else None
        # a recipe without the entries was made without a predicted layout, and without an upscale
        task = ImageTask(**{k: data[k] for k in fields}, edit=edit, layout=layout,
                         auto_layout=data.get("auto_layout", False), upscale=data.get("upscale", False),
                         fast=data.get("fast", False)).validate()
    except (KeyError, TypeError) as exc:
        raise InputError(f"the diffgen recipe is incomplete or damaged ({exc})") from None
    placement_of(data)
    return task
