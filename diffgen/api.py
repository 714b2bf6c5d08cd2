"""The Python API: load a model, sample images, encode prompts.

    import diffgen
    model = diffgen.load()                                  # the embedded default model
    images = model.sample("panda on a bike", n=4, seed=0)   # PIL images, recipe in image.info
    images = model.sample(["a cat", "a dog"], steps=30, guidance=2.5, sampler="heun", negative="blurry")
    images = model.sample("panda on a bike", fast=True)     # the distilled student: 4 forwards an image
    encoding = model.encode(["a red apple", "a green apple"])

``diffgen sample`` is a client of the same functions: for the same settings and seeds,
``Model.sample`` returns exactly the pixels the CLI writes into its PNGs (a test compares them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image

from diffgen.engine.text import TextEncoding
from diffgen.sampling.layout import DEFAULT_LAYOUT_STRENGTH
from diffgen.sampling.settings import DEFAULT_BATCH_SIZE, DEFAULTS, SamplingSettings


class Model:
    """A loaded diffgen checkpoint, ready to sample and encode."""

    def __init__(self, diffusion_model, name: str, path: Path | None = None):
        self.diffusion_model = diffusion_model
        self.name = name
        self.path = path  # the checkpoint file, where the student of fast=True is looked for
        self._student_file: Path | None = None  # the student attached for fast sampling

    @property
    def image_size(self) -> int:
        """The side of the base model's images (the upscaler, where there is one, doubles it)."""
        return self.diffusion_model.config.image_size

    @property
    def has_upscaler(self) -> bool:
        return self.diffusion_model.upscaler is not None

    @property
    def content_hash(self) -> str:
        """The checkpoint's content hash (what PNG recipes name the model by)."""
        return self.diffusion_model.content_hash or ""

    @property
    def device(self) -> torch.device:
        return self.diffusion_model.device

    def sample(self, prompts: str | Sequence[str], n: int = 1, seed: int | None = None, *,
               steps: int | None = None, guidance: float = DEFAULTS.guidance, sampler: str = DEFAULTS.sampler,
               schedule: str = DEFAULTS.schedule, negative: str = DEFAULTS.negative,
               batch_size: int = DEFAULT_BATCH_SIZE, init_image: str | Path | None = None,
               strength: float | None = None, mask: str | Path | None = None, mask_blur: int = 0,
               place: Mapping[str, Sequence[float]] | None = None, layout_strength: float = DEFAULT_LAYOUT_STRENGTH,
               auto_layout: bool = True, upscale: bool = True, seeds: Sequence[int] | None = None,
               callback: Callable[[int, int], None] | None = None,
               adapters: Sequence[str | Path | tuple[str | Path, float]] = (),
               adapter_dir: str | Path | None = None, fast: bool = False,
               student: str | Path | None = None) -> list[Image.Image]:
        """``n`` images per prompt; image k (counted across prompts and repeats) uses seed + k.

        Without ``seed`` a random one is drawn; ``seeds`` gives every image its own instead (one per
        image, in order). Each image's ``info`` holds its recipe (the PNG text chunks ``parameters``
        and ``diffgen``; ``diffgen.sampling.images.save_png`` writes them into the file).
        ``init_image`` (a file) makes it image-to-image (``strength`` 0-1, default 0.75) and, with
        ``mask`` (white = repaint), inpainting. ``place`` lays out named objects,
        ``{"dog": (0, 0, 0.5, 1), "cat": (0.5, 0, 1, 1)}``: each name a phrase of every prompt, its
        box (x0, y0, x1, y1) in fractions of the image side (sampling/layout.py). Without it, a
        prompt that names two or more objects is laid out by the model's layout predictor where it
        has one (``auto_layout=False``: not; sampling/predicted_layout.py). Where the model has an
        upscaler, each image is enlarged 2x by it (``upscale=False``: the base size).
        ``callback(done, total)`` is called after every sampler step with the sampler steps done
        and to do over all images (a progress bar's numbers). ``adapters`` (files from ``diffgen
        train --adapter``: ``"x.safetensors"``, ``"x.safetensors:0.8"`` or ``("x.safetensors", 0.8)``)
        and, where ``adapter_dir`` is given, ``<lora:NAME:WEIGHT>`` in the prompts (NAME in that
        folder) apply for this call only. ``fast=True`` samples with the model's distilled student
        (one forward a step, ``steps`` default 4; docs/DISTILL.md): the file ``student``, else
        ``NAME.student.safetensors`` beside the checkpoint; it takes no ``negative`` and no adapters.
        ``steps`` defaults to 20 otherwise.
        """
        from dataclasses import replace

        from diffgen.adapters import attach_adapters, detach_adapters, run_adapters
        from diffgen.errors import InputError
        from diffgen.sampling.prompts import PromptSpec
        from diffgen.sampling.request import sample_request
        from diffgen.sampling.settings import default_steps
        from diffgen.sampling.tasks import max_batch_size, plan_tasks

        if isinstance(adapters, (str, Path)):
            adapters = [adapters]
        # tags are read only where the caller names the folder: a server's clients never pick files
        prompt_list, specs = run_adapters(_prompt_list(prompts), list(adapters),
                                          Path(adapter_dir) if adapter_dir is not None else None,
                                          tags=adapter_dir is not None)
        for name, value in (("n", n), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
        if batch_size > (limit := max_batch_size(self.image_size)):
            raise InputError(f"batch_size {batch_size:,} is more than this {self.image_size} px model computes at "
                             f"once (at most {limit:,})")
        request = sample_request(SamplingSettings(default_steps(steps, fast is True), sampler, schedule, guidance,
                                                  negative), seed,
                                 init_image=init_image, strength=strength, mask=mask, mask_blur=mask_blur,
                                 place=place, layout_strength=layout_strength, auto_layout=auto_layout,
                                 upscale=upscale, fast=fast)
        if fast:
            if specs:
                raise InputError("fast samples with the distilled student, which adapters were not trained for: "
                                 "drop adapters (and <lora:...>) or fast")
            self._attach_student(student)
        elif student is not None:
            raise InputError("student is the student file of fast=True: add fast=True, or drop student")
        tasks = plan_tasks([PromptSpec(p, n) for p in prompt_list], request.seed, request.task())
        if seeds is not None:
            seeds = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else None
            if seeds is None or len(seeds) != len(tasks):
                raise InputError(f"seeds must be a list of {len(tasks)} seeds, one per image")
            tasks = [replace(task, seed=s).validate() for task, s in zip(tasks, seeds)]
        if not specs:
            return self._images(tasks, batch_size, callback)
        attached = attach_adapters(self.diffusion_model, specs)
        try:
            return self._images(tasks, batch_size, callback)
        finally:
            detach_adapters(self.diffusion_model, attached)

    def _attach_student(self, student: str | Path | None) -> None:
        """Attach the student fast sampling uses (once per file)."""
        from diffgen.errors import InputError
        from diffgen.students import attach_student, find_student

        given = _path(student, "student") if student is not None else None
        if self.path is None and given is None:
            raise InputError("fast=True: this model was not loaded from a file; give student=FILE")
        path = find_student(self.path or Path(), given, "fast=True", "student=")
        if path != self._student_file or self.diffusion_model.student is None:
            attach_student(self.diffusion_model, path)
            self._student_file = path

    def _images(self, tasks: list, batch_size: int, callback: Callable[[int, int], None] | None = None
                ) -> list[Image.Image]:
        """Each task's image with its recipe in ``info``, computed in batches as the CLI computes them."""
        from diffgen.sampling.generate import batches, generate, recipe
        from diffgen.sampling.images import PARAMETERS_KEY, RECIPE_KEY, a1111_parameters, to_pil

        total, done = sum(task.sampler_steps for task in tasks), 0

        def advanced(images: int) -> None:  # the sampler took a step for ``images`` images
            nonlocal done
            done += images
            if callback is not None:
                callback(done, total)

        images = []
        for batch in batches(tasks, batch_size):
            for row, (task, image, _) in enumerate(generate(self.diffusion_model, batch, batch_size, advanced)):
                picture = to_pil(image[None])[0]
                made = recipe(task, self.diffusion_model, self.name, (len(batch), row))
                picture.info.update({PARAMETERS_KEY: a1111_parameters(made),
                                     RECIPE_KEY: json.dumps(made, sort_keys=True)})
                images.append(picture)
        return images

    def setting_grid(self, prompt: str, axes: dict[str, Sequence], seed: int = 0, *,
                     batch_size: int = DEFAULT_BATCH_SIZE,
                     **settings) -> tuple[list[Image.Image], list[Image.Image]]:
        """AUTOMATIC1111's X/Y/Z plot: (cells, grids). ``axes`` maps up to three setting names
        (guidance, steps, sampler, schedule, seed, strength) to their values, X first; every cell
        is the image ``sample`` gives for its settings; one labelled grid per Z value."""
        from diffgen.errors import InputError
        from diffgen.sampling.request import sample_request
        from diffgen.sampling.xy import Axis, axis_grid, cell_tasks

        if not isinstance(axes, Mapping) or any(isinstance(v, (str, bytes)) or not isinstance(v, Sequence)
                                                for v in axes.values()):
            raise InputError("axes must map setting names to lists of values, e.g. {'guidance': [1, 3]}")
        unknown = set(settings) - {"steps", "guidance", "sampler", "schedule", "negative"}
        if unknown:  # never dropped silently
            raise InputError(f"setting_grid takes steps, guidance, sampler, schedule and negative, not "
                             f"{', '.join(sorted(unknown))}")
        kwargs = settings
        plan_axes = [Axis(name, tuple(values)) for name, values in axes.items()]
        tasks = cell_tasks(prompt, seed, plan_axes, sample_request(SamplingSettings(**kwargs), seed).task())
        cells = self._images(tasks, batch_size)
        x, y, z = (plan_axes + [None, None])[:3]
        assert x is not None  # cell_tasks took one to three axes
        per_grid = len(x.values) * (len(y.values) if y is not None else 1)
        grids = [axis_grid(cells[g * per_grid:(g + 1) * per_grid], x, y,
                           prompt + (f", {z.name} {value}" if z is not None else ""))
                 for g, value in enumerate(z.values if z is not None else [None])]
        return cells, grids

    def forward_process(self, image: str | Path, sigmas: Sequence[float] = (0.1, 0.5, 1, 2, 5, 20, 80),
                        seed: int = 0, denoise: bool = True, prompt: str = "") -> Image.Image:
        """The image at increasing noise levels, and (``denoise``) the model's one-step estimates."""
        from diffgen.errors import InputError
        from diffgen.sampling.forward import forward_strip

        if isinstance(sigmas, (str, bytes)) or not isinstance(sigmas, Sequence) or any(
                isinstance(s, bool) or not isinstance(s, (int, float)) for s in sigmas):
            raise InputError("sigmas must be a list of numbers")
        return forward_strip(_path(image, "image"), list(sigmas), seed, self.diffusion_model if denoise else None,
                             prompt)

    def encode(self, prompts: str | Sequence[str]) -> TextEncoding:
        """Per-token states (B, L, D), pooled embeddings (B, E), token ids and counts."""
        prompt_list = _prompt_list(prompts, allow_empty=True)
        with torch.inference_mode():
            return self.diffusion_model.text_encoder.encode(prompt_list, weighted=True)


def load(path: str | Path | None = None, device: str = "auto") -> Model:
    """A checkpoint (default: $DIFFGEN_CHECKPOINT, else the embedded default model) on ``device``
    ("auto" picks CUDA, then Apple MPS, then the CPU)."""
    from diffgen.checkpoint import default_checkpoint, load_model
    from diffgen.devices import pick_device

    resolved = _path(path, "path") if path is not None else default_checkpoint()
    model = load_model(resolved, pick_device(device), image_tower=False)
    return Model(model, model.display_name, resolved)


def _prompt_list(prompts: object, allow_empty: bool = False) -> list[str]:
    """One prompt or a list of them, as a list; InputError for anything else (or, unless
    ``allow_empty``, an empty prompt: use ``negative`` for what to avoid)."""
    from diffgen.errors import InputError

    listed = [prompts] if isinstance(prompts, str) else list(prompts) \
        if isinstance(prompts, Sequence) and not isinstance(prompts, bytes) else None
    if not listed or any(not isinstance(p, str) or (not allow_empty and not p.strip()) for p in listed):
        raise InputError("prompts must be a non-empty prompt or a list of them")
    return listed


def _path(value: object, name: str) -> Path:
    """A file path given as text or a Path; InputError for anything else."""
    from diffgen.errors import InputError

    if not isinstance(value, (str, Path)):
        raise InputError(f"{name} must be a file path, got {value!r}")
    return Path(value)
