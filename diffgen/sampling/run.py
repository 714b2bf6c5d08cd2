"""A planned ``diffgen sample`` run written into its folder: the folder held against a second run,
leftovers of an interrupted run removed, a warning for each prompt too long for the text context,
a progress bar, each image written as it is made, and the run's grids at the end.

Under torchrun each process writes its share of the batches (``shard``); only the first holds the
folder and draws grids (which need every image, so they run in one process only).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffgen.distributed import DistInfo
from diffgen.errors import InputError
from diffgen.fileio import folder_lock, remove_stale_temporaries
from diffgen.sampling.plan import SamplePlan
from diffgen.sampling.settings import DEFAULT_BATCH_SIZE
from diffgen.sampling.tasks import ImageTask, max_batch_size, placement_of

if TYPE_CHECKING:
    from diffgen.engine.model import DiffusionModel
    from diffgen.sampling.generate import ImageResult
    from diffgen.sampling.xy import Axis

# A grid holds every image of the run in memory and in one picture; past this it helps nobody.
MAX_GRID_IMAGES = 1024
# Prompts remembered for the too-long warning (each is warned about once; memory stays bounded).
MAX_REMEMBERED_PROMPTS = 10_000


@dataclass(frozen=True)
class RunOptions:
    """How a planned run is written (the command line's output options)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    overwrite: bool = False
    trajectory: bool = False
    grid: bool = False
    axes: list[Axis] | None = None  # a setting grid's axes: its labelled grids are drawn at the end
    quiet: bool = False
    shard: DistInfo = field(default_factory=DistInfo)


@dataclass
class RunSummary:
    """What a run wrote besides its images: how many already existed, and its grids."""

    skipped: int = 0
    grids: list[Path] = field(default_factory=list)


def check_run_options(plan: SamplePlan, options: RunOptions) -> None:
    """Refuse, before any model is loaded, what this run cannot do."""
    if options.shard.enabled and (options.grid or options.axes or plan.replay is not None):
        raise InputError("--grid, --xy and --replay run in one process, not under torchrun")
    if options.grid and plan.count > MAX_GRID_IMAGES:
        raise InputError(f"--grid draws at most {MAX_GRID_IMAGES:,} images; this run makes {plan.count:,}")


def check_batch(plan: SamplePlan, options: RunOptions, model: DiffusionModel) -> None:
    """Refuse, before the folder is touched, a batch larger than the model computes at once
    (tasks.max_batch_size): --batch-size, or the batch a replayed recipe records."""
    size = model.config.image_size
    limit = max_batch_size(size)
    placement = placement_of(plan.replay) if plan.replay is not None else None
    if placement is not None and placement[0] > limit:
        raise InputError(f"{plan.replay_source}'s recipe was computed in a batch of {placement[0]:,} images; this "
                         f"{size} px model computes at most {limit:,} at once")
    if placement is None and options.batch_size > limit:
        raise InputError(f"--batch-size {options.batch_size:,} is more than this {size} px model computes at once "
                         f"(at most {limit:,})")


def write_run(model: DiffusionModel, plan: SamplePlan, out: Path, options: RunOptions,
              on_result: Callable[[ImageResult], None], say: Callable[[str], None]) -> RunSummary:
    """Write ``plan``'s images into ``out``, calling ``on_result`` with each as it is written and
    ``say`` with messages for the user; the grids last. Results are kept only for a grid, so memory
    stays flat for any number of images."""
    from diffgen.sampling.generate import write_grid

    check_run_options(plan, options)
    check_batch(plan, options, model)
    started = time.time()
    if plan.seed_drawn:
        say(f"seed: {plan.seed}")
    if (warning := plan.replay_warning(model)) is not None:
        say(warning)
    main = options.shard.is_main
    summary, kept = RunSummary(), []
    with folder_lock(out, "diffgen sample") if main else contextlib.nullcontext():
        if main:  # the other processes may be writing already: only files older than this run
            for stale in remove_stale_temporaries(out, before=started):
                say(f"removed {stale.name}, left by an interrupted run")
        tasks = warn_truncated(model, plan.tasks(), say)
        for result in _with_progress(model, tasks, plan, out, options):
            summary.skipped += result.skipped
            if options.grid or options.axes:
                kept.append(result)
            on_result(result)
        if options.grid:
            summary.grids.append(write_grid(kept, out))
        if options.axes:
            from diffgen.sampling.xy import write_axis_grids

            assert plan.seed is not None  # a setting grid's plan has its one seed
            summary.grids += write_axis_grids([r.path for r in kept], options.axes, out, kept[0].task.prompt,
                                              plan.seed)
    return summary


def warn_truncated(model: DiffusionModel, tasks: Iterator[ImageTask], say: Callable[[str], None]
                   ) -> Iterator[ImageTask]:
    """The tasks, unchanged; a warning for each prompt too long for the text context, the first
    time it is seen."""
    seen: set[str] = set()
    limit = model.text_encoder.context_length
    for task in tasks:
        for prompt in (task.prompt, task.negative):
            if prompt and prompt not in seen:
                if len(seen) > MAX_REMEMBERED_PROMPTS:
                    seen.clear()
                seen.add(prompt)
                count = model.text_encoder.tokenize_weighted([prompt])[1][0]  # brackets are not tokens
                if count > limit:
                    say(f"warning: prompt '{prompt[:40]}...' has {count} tokens; only the first {limit} are used")
        yield task


def _with_progress(model: DiffusionModel, tasks: Iterator[ImageTask], plan: SamplePlan, out: Path,
                   options: RunOptions) -> Iterator[ImageResult]:
    """Each ImageResult as it is written, with a progress bar on stderr (steps, images, images/s)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from diffgen.progress import progress as make_progress
    from diffgen.sampling.generate import write_images

    progress = make_progress(
        "sampling", TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(),
        TextColumn("images {task.fields[images]}/{task.fields[total_images]}"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        fields=("images", "rate"), disable=options.quiet or not options.shard.is_main)
    world = options.shard.world_size  # under torchrun this process makes about 1/world of the run
    placement = placement_of(plan.replay) if plan.replay is not None else None
    with progress:
        bar = progress.add_task("sample", total=-(-plan.total_steps // world), images=0,
                                total_images=-(-plan.count // world), rate="")
        elapsed, made, seen = 0.0, 0, 0
        for result in write_images(model, tasks, out, plan.model_name(model), options.batch_size,
                                   options.overwrite or plan.replay is not None, options.trajectory,
                                   on_step=lambda n: progress.advance(bar, n), replay_placement=placement,
                                   shard=(options.shard.rank, world)):
            seen += 1
            if result.skipped:
                progress.advance(bar, result.task.steps)
            else:
                made += 1
                elapsed += result.seconds
            progress.update(bar, images=seen, rate=f"{made / elapsed:.2f} img/s" if elapsed > 0 else "")
            yield result


def result_json(result: ImageResult) -> dict[str, Any]:
    """One image's line of ``--json``: its file, its task, the seconds it took."""
    task = {k: v for k, v in asdict(result.task).items() if k != "edit" or v is not None}
    return {"path": str(result.path), **task, "seconds": round(result.seconds, 4), "skipped": result.skipped,
            **({"trajectory": str(result.trajectory_path)} if result.trajectory_path else {})}
