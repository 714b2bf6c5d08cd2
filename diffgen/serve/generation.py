"""One request's images: checked as the CLI checks them, sampled through ``Model.sample``.

Both APIs and the page turn their fields into a ``Generation``; ``checked_generation`` builds it
with the CLI's own request check (``sampling.request.sample_request``: steps, guidance, sampler,
schedule, seed, strength, mask blur, prompt length and weights), so a value the CLI refuses is
refused here with the same words. What depends on the model (the image size, the largest batch)
is checked by ``for_model`` once the model is loaded. Images are sampled one batch per
``Model.sample`` call, with the seeds and batch placement of one call for all of them (image k of
the request gets seed + k), so each PNG's recipe replays it exactly with ``diffgen sample --replay``,
and an interrupted request still answers with the batches it finished.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from diffgen.errors import InputError
from diffgen.sampling.images import RECIPE_KEY, png_info
from diffgen.sampling.request import SEED_LIMIT, sample_request
from diffgen.sampling.settings import DEFAULT_BATCH_SIZE, SamplingSettings
from diffgen.serve.options import MAX_IMAGES_PER_REQUEST

if TYPE_CHECKING:
    from PIL import Image

    from diffgen.api import Model


@dataclass(frozen=True)
class Generation:
    """What one request asks for, checked: ``count`` images of ``prompt`` by the catalog's model
    ``model``, image k from seed ``seed + k``, computed ``batch_size`` at a time."""

    model: str
    prompt: str
    count: int
    batch_size: int
    seed: int  # drawn at random when the request gave none
    settings: SamplingSettings
    steps_per_image: int  # sampler steps of one image (image-to-image runs a share of them)
    init_image: Path | None = None
    strength: float | None = None
    mask: Path | None = None
    mask_blur: int = 0
    size: tuple[int, int] | None = None  # (width, height) asked for; None: the model's
    upscale: bool = True  # set by for_model from the size

    def for_model(self, model: Model) -> Generation:
        """This request held to ``model``: its size (the model's output size, or its base size to
        skip the upscaler) and batch size; InputError naming the sizes it can draw."""
        from diffgen.sampling.tasks import max_batch_size

        base = model.image_size
        full = 2 * base if model.has_upscaler else base
        if self.size is None or self.size == (full, full):
            upscale = model.has_upscaler
        elif model.has_upscaler and self.size == (base, base):
            upscale = False
        else:
            smaller = f" ({base}x{base} without its upscaler)" if model.has_upscaler else ""
            raise InputError(f"this model draws {full}x{full} images{smaller}, not {self.size[0]}x{self.size[1]}")
        if self.batch_size > (limit := max_batch_size(base)):
            raise InputError(f"batch size {self.batch_size:,} is more than this {base} px model computes at once "
                             f"(at most {limit:,})")
        return replace(self, upscale=upscale)


def checked_generation(model: str, prompt: object, count: object, *, batch_size: object = DEFAULT_BATCH_SIZE,
                       seed: int | None = None, settings: SamplingSettings, init_image: Path | None = None,
                       strength: float | None = None, mask: Path | None = None, mask_blur: int = 0,
                       size: tuple[int, int] | None = None, name: Callable[[str], str] = str) -> Generation:
    """The Generation these values describe, or one InputError naming the first bad value with
    ``name`` (each API's own field name)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{name('prompt')} must be a non-empty text")
    for field, value in (("count", count), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGES_PER_REQUEST:
            raise InputError(f"{name(field)} must be a whole number from 1 to {MAX_IMAGES_PER_REQUEST}, got {value!r}")
    assert isinstance(count, int) and isinstance(batch_size, int)  # checked just above
    request = sample_request(settings, seed, init_image=init_image, strength=strength, mask=mask,
                             mask_blur=mask_blur, name=name)
    if request.seed + count > SEED_LIMIT:
        raise InputError(f"{name('seed')} {request.seed} + {count} images runs past the largest seed (2^63 - 1)")
    task = request.task(prompt=prompt).validate()  # the prompt's length and weights, as the CLI checks them
    return Generation(model, prompt, count, batch_size, request.seed, request.settings,
                      task.sampler_steps, init_image, strength, mask, mask_blur, size)


class Interrupted(Exception):
    """Raised from the sampler's callback to stop the batch in progress (between two steps)."""


def sample_batches(model: Model, job: Generation, on_step: Callable[[int], None],
                   interrupted: Callable[[], bool], stopping: Callable[[], bool]) -> tuple[list[Image.Image], bool]:
    """(the images made, whether the request was cut short). ``on_step(done)`` counts the sampler
    steps done over the whole request; ``interrupted()`` stops between two steps (the batch in
    progress is dropped); ``stopping()`` stops between two batches (the server is shutting down)."""
    images: list[Image.Image] = []
    for start in range(0, job.count, job.batch_size):
        if interrupted() or stopping():
            return images, True
        before = start * job.steps_per_image

        def callback(done: int, total: int) -> None:
            if interrupted():
                raise Interrupted
            on_step(before + done)

        try:
            images += model.sample(
                job.prompt, min(job.batch_size, job.count - start), job.seed + start,
                steps=job.settings.steps, guidance=job.settings.guidance, sampler=job.settings.sampler,
                schedule=job.settings.schedule, negative=job.settings.negative, batch_size=job.batch_size,
                init_image=job.init_image, strength=job.strength, mask=job.mask, mask_blur=job.mask_blur,
                upscale=job.upscale, callback=callback)
        except Interrupted:
            return images, True
    return images, False


def png_bytes(image: Image.Image) -> bytes:
    """The PNG ``diffgen sample`` writes for this image: the same pixels and recipe chunks
    (``sampling.images.png_info``), so ``diffgen sample --replay`` on it gives these bytes again."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(json.loads(image.info[RECIPE_KEY])))
    return buffer.getvalue()


def recipe_of(image: Image.Image) -> dict:
    """The diffgen recipe ``Model.sample`` gave the image."""
    return json.loads(image.info[RECIPE_KEY])
