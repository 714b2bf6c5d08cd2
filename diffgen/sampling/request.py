"""A sampling request from a user's values, checked in one place.

`diffgen sample`, `Model.sample` and `Model.setting_grid` describe what to draw with the same
values: the sampling settings, the first seed, an init image and mask, named places, and the
layout-predictor and upscaler switches. `sample_request` turns them into a `SampleRequest` or
raises one InputError that names the value the way the caller's user wrote it (``--mask-blur`` on
the command line, ``mask_blur`` in Python); `SampleRequest.task` is the ImageTask of one image,
and a prompt file's lines override its fields (sampling/prompts.py).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from diffgen.errors import InputError
from diffgen.sampling.edits import EditSource
from diffgen.sampling.layout import DEFAULT_LAYOUT_STRENGTH, Layout
from diffgen.sampling.settings import DEFAULTS, SamplingSettings, checked_settings, python_name
from diffgen.sampling.tasks import ImageTask

SEED_LIMIT = 2**63  # seeds are whole numbers in [0, 2^63): torch.Generator's range
DRAWN_SEED_LIMIT = 2**31  # a drawn seed is short enough to read and type again


def draw_seed() -> int:
    """A random first seed, for a run that was given none (it is printed and recorded)."""
    return secrets.randbelow(DRAWN_SEED_LIMIT)


@dataclass(frozen=True)
class SampleRequest:
    """What every image of a request shares: checked settings, the first seed (drawn when none
    was given), the image-to-image inputs, the layout, and the two switches."""

    settings: SamplingSettings = DEFAULTS
    seed: int = 0
    seed_drawn: bool = False
    edit: EditSource | None = None
    layout: Layout | None = None
    auto_layout: bool = True
    upscale: bool = True
    fast: bool = False  # the model's distilled student (engine/consistency.py)

    def task(self, index: int = 0, prompt: str = "", seed: int | None = None) -> ImageTask:
        """Image ``index`` of ``prompt`` from ``seed`` (default: the request's) under this request."""
        return ImageTask.of(index, prompt, self.seed if seed is None else seed, self.settings, self.edit,
                            self.layout, self.auto_layout, self.upscale, self.fast)


def sample_request(settings: SamplingSettings = DEFAULTS, seed: int | None = None, *,
                   init_image: str | Path | None = None, strength: float | None = None,
                   mask: str | Path | None = None, mask_blur: int = 0,
                   place: Sequence[str] | Mapping[str, Sequence[float]] | None = None,
                   layout_strength: float = DEFAULT_LAYOUT_STRENGTH, auto_layout: bool = True,
                   upscale: bool = True, fast: bool = False, name: Callable[[str], str] = python_name
                   ) -> SampleRequest:
    """The request these values describe; InputError naming the first bad one with ``name``.

    ``place`` is either the command line's ``NAME=X0,Y0,X1,Y1`` texts or a mapping from names to
    boxes ``(x0, y0, x1, y1)``. The files of ``init_image`` and ``mask`` are read and hashed now."""
    settings = checked_settings(settings, name)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT):
        raise InputError(f"{name('seed')} must be a whole number in [0, 2^63), got {seed!r}")
    for flag, value in (("auto_layout", auto_layout), ("upscale", upscale), ("fast", fast)):
        if not isinstance(value, bool):
            raise InputError(f"{name(flag)} must be true or false, got {value!r}")
    edit = None
    if init_image is not None:
        if not isinstance(init_image, (str, Path)) or (mask is not None and not isinstance(mask, (str, Path))):
            raise InputError(f"{name('init_image')} and {name('mask')} must be file paths")
        edit = EditSource.from_files(Path(init_image), strength, Path(mask) if mask is not None else None,
                                     mask_blur)
    elif strength is not None or mask is not None or mask_blur:
        raise InputError(f"{name('strength')}, {name('mask')} and {name('mask_blur')} need an {name('init_image')}")
    if fast and settings.negative:
        raise InputError(f"{name('negative')} does not work with {name('fast')}: the student's guidance was "
                         "distilled against the empty prompt")
    return SampleRequest(settings, draw_seed() if seed is None else seed, seed is None, edit,
                         layout_of(place, layout_strength, name), auto_layout, upscale, fast)


def layout_of(place: Sequence[str] | Mapping[str, Sequence[float]] | None, strength: float,
              name: Callable[[str], str] = python_name) -> Layout | None:
    """The layout of ``place`` (texts or a mapping, see ``sample_request``), None without one."""
    if place is None or (isinstance(place, (Sequence, Mapping)) and not isinstance(place, str) and not place):
        return None
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise InputError(f"{name('layout_strength')} must be a finite number, got {strength!r}")
    if isinstance(place, Mapping):
        boxes = list(place.values())
        if any(not isinstance(n, str) for n in place) or any(
                isinstance(b, (str, bytes)) or not isinstance(b, Sequence) or len(b) != 4 for b in boxes):
            raise InputError(f"{name('place')}: each place is a name and a box of four numbers x0, y0, x1, y1")
        return Layout(tuple((n, *box) for n, box in place.items()), float(strength))  # type: ignore[misc]
    if isinstance(place, str) or not all(isinstance(text, str) for text in place):
        raise InputError(f"{name('place')} must be NAME=X0,Y0,X1,Y1 texts or a mapping from names to boxes")
    return Layout.parse(place, float(strength))
