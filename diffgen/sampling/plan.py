"""Planning a ``diffgen sample`` run: its prompts (arguments, a prompt file, or a PNG's recipe) and
its request (sampling/request.py) into a count of images and sampler steps, checked in one pass,
and its tasks, produced lazily; or a setting grid's cells."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffgen.errors import InputError
from diffgen.sampling.prompts import PromptSpec
from diffgen.sampling.request import SEED_LIMIT, SampleRequest
from diffgen.sampling.tasks import MAX_INDEX, ImageTask, iter_tasks, task_from_recipe

if TYPE_CHECKING:
    from diffgen.engine.model import DiffusionModel
    from diffgen.sampling.xy import Axis


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
    seed_drawn: bool
    replay: dict[str, Any] | None = None
    replay_source: Path | None = None  # the PNG the recipe came from

    fixed: tuple[ImageTask, ...] | None = None  # a setting grid's cells, planned in full
    first_index: int = 0

    def tasks(self) -> Iterator[ImageTask]:
        if self.fixed is not None:
            return iter(self.fixed)
        if self.replay is not None:
            return iter([task_from_recipe(self.replay)])
        assert self.seed is not None  # only a replay's plan has no first seed
        return iter_tasks(self.specs(), self.seed, self.defaults, self.first_index)

    def numbered_after(self, out_dir: Path) -> SamplePlan:
        """This plan with its images numbered after the highest index already in ``out_dir``
        (``--new-run``: the seeds stay as they were)."""
        from dataclasses import replace

        first = next_free_index(out_dir) if out_dir.is_dir() else 0
        if first + self.count - 1 > MAX_INDEX:
            raise InputError(f"--new-run would number this run's images up to {first + self.count - 1:,}, past the "
                             f"largest index ({MAX_INDEX:,}) of {out_dir}: choose another -o folder")
        return replace(self, first_index=first)

    def model_name(self, model: DiffusionModel) -> str:
        """What the recipes call the model: a replay keeps the name its recipe gave it."""
        return self.replay.get("model", model.display_name) if self.replay is not None else model.display_name

    def replay_warning(self, model: DiffusionModel) -> str | None:
        """For a replay by another model than the recipe's, the warning that the image will differ."""
        if self.replay is None or self.replay.get("model_hash") == model.content_hash:
            return None
        return (f"warning: {self.replay_source} was made by model {str(self.replay.get('model_hash', '?'))[:10]}, "
                f"this is {(model.content_hash or '?')[:10]}: the image will differ")


def plan_sample(prompts: list[str], prompt_file: Path | None, replay: Path | None, num_images: int,
                request: SampleRequest) -> SamplePlan:
    """The plan of a run from prompt arguments and/or a prompt file, or from a PNG's recipe.

    Every prompt and setting is checked here, in one pass that keeps only counts, before any
    model is loaded. A replay regenerates one recipe exactly, so it cannot be combined with
    prompts (they would be dropped otherwise)."""
    import itertools

    from diffgen.sampling.images import read_recipe
    from diffgen.sampling.prompts import iter_prompt_file, read_once

    if replay is not None:
        if prompts or prompt_file is not None or request.edit is not None or request.layout is not None \
                or not request.auto_layout or not request.upscale or request.fast:
            raise InputError("--replay regenerates the image's own prompt and inputs: drop the prompts, -f, "
                             "--init-image, --place, --no-auto-layout, --no-upscale and --fast")
        recipe_data = read_recipe(replay)
        task = task_from_recipe(recipe_data)
        if task.edit is not None:  # its input files, checked before the run starts
            task.edit.check_files()
        return SamplePlan(lambda: iter(()), task, 1, task.steps, None, False, recipe_data, replay)

    # a pipe (-f /dev/stdin, <(...)) can be read only once: its text, read now, serves both passes
    source = read_once(prompt_file) if prompt_file is not None else None

    def specs() -> Iterator[PromptSpec]:
        return itertools.chain((PromptSpec(p, num_images) for p in prompts),
                               iter_prompt_file(source, num_images) if source is not None else ())

    first, defaults = request.seed, request.task()
    count = total_steps = 0
    for spec in specs():
        if not spec.prompt.strip():
            raise InputError("empty prompt given; use --negative for what to avoid")
        try:  # a prompt file's values are named by file and line, as its keys are (prompts.py)
            spec_tasks = iter_tasks([spec], first + count, defaults)  # checks the prompt's settings and seeds
            steps = next(spec_tasks).sampler_steps
            if spec.seed is not None and spec.seed + spec.num_images > SEED_LIMIT:
                raise InputError(f"seed {spec.seed} + {spec.num_images} images runs past the largest seed (2^63 - 1)")
        except InputError as exc:
            if not spec.where:
                raise
            raise InputError(f"{spec.where}: {exc}") from None
        count += spec.num_images
        total_steps += spec.num_images * steps
    if count == 0:
        if prompt_file is not None and not prompts:
            raise InputError(f"prompt file {prompt_file} has no prompts (only blank or # lines)")
        raise InputError("no prompt given: pass PROMPT ..., -f PROMPT_FILE or --replay IMAGE.png")
    if first + count > SEED_LIMIT:
        raise InputError(f"--seed {first} + {count} images runs past the largest seed (2^63 - 1)")
    return SamplePlan(specs, defaults, count, total_steps, first, request.seed_drawn)


def plan_grid(prompts: list[str], prompt_file: Path | None, replay: Path | None, axis_texts: list[str],
              request: SampleRequest) -> tuple[SamplePlan, list[Axis]]:
    """The plan of a setting grid (``--xy``): one prompt, every combination of the axes, one seed."""
    from diffgen.sampling.xy import cell_tasks, parse_axis

    if len(prompts) != 1 or prompt_file is not None or replay is not None:
        raise InputError("--xy draws one prompt: give exactly one PROMPT (no -f, no --replay)")
    axes = [parse_axis(text) for text in axis_texts]
    tasks = tuple(cell_tasks(prompts[0], request.seed, axes, request.task()))
    return SamplePlan(lambda: iter(()), tasks[0], len(tasks), sum(t.sampler_steps for t in tasks), request.seed,
                      request.seed_drawn, fixed=tasks), axes


def next_free_index(out_dir: Path) -> int:
    """One past the highest image index in ``out_dir`` (files named ``{index:05d}-...png``). A name
    with more digits than diffgen numbers with (MAX_INDEX) is not one of its images: ignored."""
    import re

    indices = [int(m[1]) for p in out_dir.glob("*.png") if (m := re.match(r"^(\d{5,9})-", p.name))]
    return max(indices, default=-1) + 1
