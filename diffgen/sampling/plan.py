"""Planning a ``diffgen sample`` run: its prompts (arguments, a prompt file, or a PNG's recipe) into
a count of images and sampler steps, checked in one pass, and its tasks, produced lazily."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffgen.errors import InputError
from diffgen.sampling.edits import EditSource
from diffgen.sampling.layout import Layout
from diffgen.sampling.prompts import PromptSpec
from diffgen.sampling.settings import SamplingSettings
from diffgen.sampling.tasks import ImageTask, iter_tasks, task_from_recipe


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
                seed: int | None, settings: SamplingSettings, edit: EditSource | None = None,
                layout: Layout | None = None, auto_layout: bool = True, upscale: bool = True) -> SamplePlan:
    """The plan of a run from prompt arguments and/or a prompt file, or from a PNG's recipe.

    Every prompt and setting is checked here, in one pass that keeps only counts, before any
    model is loaded. A replay regenerates one recipe exactly, so it cannot be combined with
    prompts (they would be dropped otherwise)."""
    import itertools
    import secrets

    from diffgen.sampling.images import read_recipe
    from diffgen.sampling.prompts import iter_prompt_file

    if replay is not None:
        if prompts or prompt_file is not None or edit is not None or layout is not None or not auto_layout \
                or not upscale:
            raise InputError("--replay regenerates the image's own prompt and inputs: drop the prompts, -f, "
                             "--init-image, --place, --no-auto-layout and --no-upscale")
        recipe_data = read_recipe(replay)
        task = task_from_recipe(recipe_data)
        return SamplePlan(lambda: iter(()), task, 1, task.steps, None, False, recipe_data)

    def specs() -> Iterator[PromptSpec]:
        return itertools.chain((PromptSpec(p, num_images) for p in prompts),
                               iter_prompt_file(prompt_file, num_images) if prompt_file is not None else ())

    first = secrets.randbelow(2**31) if seed is None else seed
    defaults = ImageTask.of(0, "", 0, settings, edit, layout, auto_layout, upscale)
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


def next_free_index(out_dir: Path) -> int:
    """One past the highest image index in ``out_dir`` (files named ``{index:05d}-...png``)."""
    import re

    indices = [int(m[1]) for p in out_dir.glob("*.png") if (m := re.match(r"^(\d{5,})-", p.name))]
    return max(indices, default=-1) + 1
