"""Sampling settings: the sampler's choices (steps, sampler, schedule, guidance, negative prompt),
their defaults and checks, the default batch size and the fast path's step count.

The CLI's option defaults, prompt-file lines, PNG recipes and ``--replay``, training-time sample
grids, ``eval`` and the Python API all build a ``SamplingSettings``, so these defaults change here
only (the image-editing and layout defaults live with their inputs: sampling/edits.py,
sampling/layout.py). Sampler and schedule names come from the registries below (samplers.SAMPLERS and
schedule.SCHEDULES are keyed by them; a test keeps them equal). No torch import: the CLI reads
this module to print its help.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from diffgen.errors import InputError

SAMPLER_NAMES = ("euler", "heun", "dpmpp-2m", "euler-ancestral", "dpmpp-2m-sde", "edm-stochastic")
SCHEDULE_NAMES = ("karras", "exponential", "vp")
# The names AUTOMATIC1111's web UI writes for the same samplers: written into PNG metadata so its
# readers understand ours, and accepted as input ("DPM++ 2M", "Euler a").
A1111_SAMPLER_LABELS = {
    "euler": "Euler",
    "euler-ancestral": "Euler a",
    "heun": "Heun",
    "dpmpp-2m": "DPM++ 2M",
    "dpmpp-2m-sde": "DPM++ 2M SDE",
    "edm-stochastic": "EDM stochastic",
}
# Other spellings people type for the same samplers (deterministic DDIM is the Euler step).
SAMPLER_ALIASES = {
    **{label.lower(): name for name, label in A1111_SAMPLER_LABELS.items()},
    "ddim": "euler", "euler_a": "euler-ancestral", "dpm++ 2m karras": "dpmpp-2m", "dpmpp_2m": "dpmpp-2m",
    "dpmpp_2m_sde": "dpmpp-2m-sde",
}
# No real use needs more; the limit keeps a typo from allocating a sigma table of that size.
MAX_STEPS = 10_000
# Past this the guided estimate is all amplified difference (AUTOMATIC1111's slider stops at 30); far
# larger scales overflow float32 mid-sampling (1e30 gave all-black images).
MAX_GUIDANCE = 100.0
# Images through the model at once, unless asked otherwise. A recipe records the batch an image was
# computed in (its size and row), so --replay reproduces it whatever this is.
DEFAULT_BATCH_SIZE = 8


def sampler_name(name: str) -> str:
    """The registry name for ``name`` or one of its aliases (case-insensitive); InputError if none."""
    key = name.strip().lower()
    if key in SAMPLER_NAMES:
        return key
    if key in SAMPLER_ALIASES:
        return SAMPLER_ALIASES[key]
    raise InputError(f"unknown sampler '{name}' (choose from: {', '.join(SAMPLER_NAMES)}; "
                     f"AUTOMATIC1111 names such as 'DPM++ 2M' and 'Euler a' work too)")


@dataclass(frozen=True)
class SamplingSettings:
    """How images are sampled: steps, sampler, noise schedule, guidance scale, negative prompt."""

    steps: int = 20
    sampler: str = "dpmpp-2m"
    schedule: str = "karras"
    guidance: float = 3.0
    negative: str = ""

    def validate(self) -> SamplingSettings:
        """These settings with the sampler's registry name; InputError for anything no sampler can run."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise InputError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {self.steps!r}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) \
                or not (math.isfinite(self.guidance) and 0 <= self.guidance <= MAX_GUIDANCE):
            raise InputError(f"guidance must be a finite number from 0 to {MAX_GUIDANCE:g}, got {self.guidance!r}")
        if not isinstance(self.sampler, str):
            raise InputError(f"sampler must be a name, got {self.sampler!r}")
        if self.schedule not in SCHEDULE_NAMES:
            raise InputError(f"unknown schedule '{self.schedule}' (choose from: {', '.join(SCHEDULE_NAMES)})")
        if not isinstance(self.negative, str):
            raise InputError(f"negative must be text, got {self.negative!r}")
        return replace(self, sampler=sampler_name(self.sampler), guidance=float(self.guidance))


DEFAULTS = SamplingSettings()
# Steps of fast sampling (--fast, fast=True: the model's distilled student, engine/consistency.py):
# one student forward each, against DEFAULTS.steps x 2 forwards of the teacher with guidance.
FAST_STEPS = 4
# Upscaler steps of a fast image: one DPM-Solver++ step from the upscaler's sigma_max is its mean
# detail given the base image, 0.1 dB PSNR below the two steps of a full-quality image on held-out
# scenes (docs/BENCHMARKS.md, the upscaling stage), at half the cost, which at 4 student steps is
# a sixth of the image's (docs/DISTILL.md).
FAST_UPSCALE_STEPS = 1


def default_steps(steps: int | None, fast: bool) -> int:
    """``steps`` where given, else the default of the chosen path (FAST_STEPS or DEFAULTS.steps)."""
    return steps if steps is not None else FAST_STEPS if fast else DEFAULTS.steps


def python_name(name: str) -> str:
    """How the Python API names a value: as it is."""
    return name


def option_name(name: str) -> str:
    """How the command line names a value: ``mask_blur`` -> ``--mask-blur``."""
    return "--" + name.replace("_", "-")


def checked_settings(settings: SamplingSettings, name: Callable[[str], str]) -> SamplingSettings:
    """``settings.validate()``, its messages naming the values with ``name``."""
    try:
        return settings.validate()
    except InputError as exc:
        text = str(exc)
        first = text.split()[0]
        if first in ("steps", "guidance", "negative", "sampler", "schedule"):
            raise InputError(name(first) + text[len(first):]) from None
        raise
