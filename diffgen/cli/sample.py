"""`diffgen sample`: prompts (arguments, a prompt file or a PNG's recipe) to PNGs with their recipes."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from diffgen.cli.app import app
from diffgen.cli.common import (
    CheckpointOption,
    DebugOption,
    ThreadsOption,
    check_output_dir,
    check_run,
    load_model,
    option_settings,
    user_errors,
)
from diffgen.errors import InputError
from diffgen.fileio import folder_lock, remove_stale_temporaries
from diffgen.sampling.layout import DEFAULT_LAYOUT_STRENGTH, Layout
from diffgen.sampling.settings import DEFAULTS, SAMPLER_NAMES, SCHEDULE_NAMES, SamplingSettings

# A grid holds every image of the run in memory and in one picture; past this it helps nobody.
MAX_GRID_IMAGES = 1024


@app.command()
def sample(
    prompts: Annotated[Optional[list[str]], typer.Argument(
        help="One or more prompts.", show_default=False)] = None,
    num_images: Annotated[int, typer.Option("-n", "--num-images", help="Images per prompt.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Images through the model at once.")] = 8,
    seed: Annotated[Optional[int], typer.Option(
        help="Seed of the first image; image k gets seed + k. Default: random (printed).",
        show_default=False)] = None,
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = DEFAULTS.steps,
    sampler: Annotated[str, typer.Option(help=f"One of: {', '.join(SAMPLER_NAMES)} (or an AUTOMATIC1111 "
                                              "name such as 'DPM++ 2M').")] = DEFAULTS.sampler,
    schedule: Annotated[str, typer.Option(help=f"Noise schedule: {', '.join(SCHEDULE_NAMES)}.")] = DEFAULTS.schedule,
    guidance: Annotated[float, typer.Option("-g", "--guidance",
                                            help="Classifier-free guidance scale (1 = none).")] = DEFAULTS.guidance,
    negative: Annotated[str, typer.Option(help="Negative prompt (what to steer away from).")] = DEFAULTS.negative,
    checkpoint: CheckpointOption = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("outputs"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps (auto picks the best; "
                                             "bf16 on CUDA).")] = "auto",
    prompt_file: Annotated[Optional[Path], typer.Option(
        "-f", "--prompt-file", help=".txt (one prompt per line) or .jsonl (objects with prompt and "
        "optional negative, n, seed, steps, guidance, sampler).", show_default=False)] = None,
    replay: Annotated[Optional[Path], typer.Option(
        help="Regenerate the image whose recipe is stored in this PNG.", show_default=False)] = None,
    init_image: Annotated[Optional[Path], typer.Option(
        help="Image-to-image: start from this picture (resized and centre-cropped to the model's size).",
        show_default=False)] = None,
    strength: Annotated[Optional[float], typer.Option(
        help="With --init-image: how much to change it, 0 (keep) to 1 (from pure noise). Default 0.75.",
        show_default=False)] = None,
    mask: Annotated[Optional[Path], typer.Option(
        help="Inpainting, with --init-image: repaint where this mask is white, keep where it is black.",
        show_default=False)] = None,
    mask_blur: Annotated[int, typer.Option(help="Soften the mask's edge by this many pixels.")] = 0,
    place: Annotated[Optional[list[str]], typer.Option(
        help="Lay out an object: NAME=X0,Y0,X1,Y1, a word or phrase of the prompt and its box in fractions "
        "of the image side (0,0 top left), e.g. --place dog=0,0,0.5,1 --place cat=0.5,0,1,1. Repeatable.",
        show_default=False)] = None,
    layout_strength: Annotated[float, typer.Option(
        help="How strongly --place steers each name's attention into its box.")] = DEFAULT_LAYOUT_STRENGTH,
    auto_layout: Annotated[bool, typer.Option(
        help="Without --place, lay out a prompt that names two or more objects with the model's layout "
             "predictor (where the model has one).")] = True,
    upscale: Annotated[bool, typer.Option(
        help="Enlarge each image 2x with the model's upscaler, where it has one (the default model: "
             "128 px); --no-upscale gives the base size.")] = True,
    xy: Annotated[Optional[list[str]], typer.Option(
        help="A setting grid axis NAME=V1,V2,... (guidance, steps, sampler, schedule, seed, strength); "
             "repeat for Y and Z. One prompt, one seed, one image per cell, and a labelled grid.",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose files already exist.")] = False,
    new_run: Annotated[bool, typer.Option(
        help="Number this run's images after the highest index already in the folder (keeps the seeds).")] = False,
    grid: Annotated[bool, typer.Option(help="Also write one labelled grid of the run.")] = False,
    trajectory: Annotated[bool, typer.Option(
        help="Also write, per image, a strip of the clean-image estimate at each step.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or messages.")] = False,
    threads: ThreadsOption = None,
    debug: DebugOption = False,
) -> None:
    """Generate images from prompts; PNGs carry their recipe (A1111 `parameters` + diffgen JSON)."""
    with user_errors(debug):
        check_run(num_images, batch_size, seed)
        settings = option_settings(SamplingSettings(steps, sampler, schedule, guidance, negative))
        started = time.time()
        rank, world, local_rank = _torchrun_shard()
        if rank == 0:  # under torchrun the first process checks and holds the folder for all
            check_output_dir(out)
        from diffgen.sampling.edits import EditSource
        from diffgen.sampling.generate import write_grid
        from diffgen.sampling.plan import plan_sample
        from diffgen.sampling.tasks import placement_of

        edit = None
        if init_image is not None:
            edit = EditSource.from_files(init_image, strength, mask, mask_blur)
        elif strength is not None or mask is not None or mask_blur:
            raise InputError("--strength, --mask and --mask-blur need an --init-image")
        layout = Layout.parse(place, layout_strength) if place else None
        if xy:
            plan, axes = _xy_plan(prompts or [], prompt_file, replay, seed, settings, edit, xy, layout, auto_layout,
                                  upscale)
        else:
            plan = plan_sample(prompts or [], prompt_file, replay, num_images, seed, settings, edit, layout,
                               auto_layout, upscale)
            if new_run:
                from dataclasses import replace as with_fields

                from diffgen.sampling.plan import next_free_index

                plan = with_fields(plan, first_index=next_free_index(out) if out.is_dir() else 0)
        from diffgen.threads import apply_threads

        apply_threads(threads)
        if world > 1 and (grid or xy or replay is not None):
            raise InputError("--grid, --xy and --replay run in one process, not under torchrun")
        if world > 1 and device in ("auto", "cuda") and _cuda_available():
            device = f"cuda:{local_rank}"
        model = load_model(checkpoint, device, image_tower=False)
        say = (lambda message: None) if quiet else (lambda message: typer.echo(message, err=True))
        if plan.random_seed:
            say(f"seed: {plan.seed}")
        model_name = model.metadata.get("name") or (checkpoint.stem if checkpoint else "default")
        if plan.replay is not None:
            if plan.replay.get("model_hash") != model.content_hash:
                say(f"warning: {replay} was made by model {str(plan.replay.get('model_hash', '?'))[:10]}, "
                    f"this is {model.content_hash[:10]}: the image will differ")
            model_name = plan.replay.get("model", model_name)
        if grid and plan.count > MAX_GRID_IMAGES:
            raise InputError(f"--grid draws at most {MAX_GRID_IMAGES:,} images; this run makes {plan.count:,}")
        tasks = _warn_truncated(model, plan.tasks(), say)
        with folder_lock(out, "diffgen sample") if rank == 0 else contextlib.nullcontext():
            if rank == 0:  # the other processes may be writing already: only files older than this run
                for stale in remove_stale_temporaries(out, before=started):
                    say(f"removed {stale.name}, left by an interrupted run")
            kept, skipped = [], 0  # results are kept only for the grid: memory stays flat for any -n
            placement = placement_of(plan.replay) if plan.replay is not None else None
            for result in _run_with_progress(model, tasks, plan, out, model_name, batch_size,
                                             overwrite or plan.replay is not None, trajectory,
                                             quiet or rank > 0, placement, (rank, world)):
                skipped += result.skipped
                if grid or xy:
                    kept.append(result)
                if as_json:
                    typer.echo(json.dumps(_result_json(result)))
                elif not result.skipped:
                    typer.echo(str(result.path))
            if grid:
                say(f"grid: {write_grid(kept, out)}")
            if xy:
                from diffgen.sampling.xy import write_axis_grids

                for path in write_axis_grids([r.path for r in kept], axes, out, kept[0].task.prompt, plan.seed):
                    typer.echo(str(path))
        if skipped:
            say(f"{skipped} image(s) already existed and were skipped (--overwrite to redo)")


def _xy_plan(prompts: list[str], prompt_file: Path | None, replay: Path | None, seed: int | None,
             settings: SamplingSettings, edit: Any, xy: list[str], layout: Any = None, auto_layout: bool = True,
             upscale: bool = True) -> tuple[Any, list[Any]]:
    """The plan of a setting grid: one prompt, every combination of the axes, one seed."""
    import secrets

    from diffgen.sampling.plan import SamplePlan
    from diffgen.sampling.tasks import ImageTask
    from diffgen.sampling.xy import cell_tasks, parse_axis

    if len(prompts) != 1 or prompt_file is not None or replay is not None:
        raise InputError("--xy draws one prompt: give exactly one PROMPT (no -f, no --replay)")
    axes = [parse_axis(text) for text in xy]
    first = secrets.randbelow(2**31) if seed is None else seed
    tasks = tuple(cell_tasks(prompts[0], first, axes, ImageTask.of(0, "", 0, settings, edit, layout, auto_layout,
                                                                      upscale)))
    return SamplePlan(lambda: iter(()), tasks[0], len(tasks), sum(t.sampler_steps for t in tasks), first,
                      seed is None, fixed=tasks), axes


def _warn_truncated(model: Any, tasks: Iterator[Any], say: Callable[[str], None]) -> Iterator[Any]:
    """The tasks, unchanged; a warning for each prompt too long for the text context, the first
    time it is seen (remembering a bounded number of prompts)."""
    seen: set[str] = set()
    limit = model.text_encoder.context_length
    for task in tasks:
        for prompt in (task.prompt, task.negative):
            if prompt and prompt not in seen:
                if len(seen) > 10_000:
                    seen.clear()
                seen.add(prompt)
                count = model.text_encoder.tokenize_weighted([prompt])[1][0]  # brackets are not tokens
                if count > limit:
                    say(f"warning: prompt '{prompt[:40]}...' has {count} tokens; only the first {limit} are used")
        yield task


def _torchrun_shard() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if "RANK" not in os.environ:
        raise InputError("WORLD_SIZE is set but RANK is not: start multi-process sampling with torchrun")
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_with_progress(model: Any, tasks: Iterator[Any], plan: Any, out: Path, model_name: str, batch_size: int,
                       overwrite: bool, trajectory: bool, quiet: bool,
                       placement: tuple[int, int] | None = None,
                       shard: tuple[int, int] = (0, 1)) -> Iterator[Any]:
    """Yield each ImageResult as it is written, with a progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from diffgen.progress import progress as make_progress
    from diffgen.sampling.generate import write_images

    progress = make_progress(
        "sampling", TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(),
        TextColumn("images {task.fields[images]}/{task.fields[total_images]}"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        fields=("images", "rate"), disable=quiet)
    with progress:
        world = shard[1]  # under torchrun this process makes about 1/world of the run
        bar = progress.add_task("sample", total=-(-plan.total_steps // world), images=0,
                                total_images=-(-plan.count // world), rate="")
        elapsed, made, seen = 0.0, 0, 0
        for result in write_images(model, tasks, out, model_name, batch_size, overwrite, trajectory,
                                   on_step=lambda n: progress.advance(bar, n), replay_placement=placement,
                                   shard=shard):
            seen += 1
            if result.skipped:
                progress.advance(bar, result.task.steps)
            else:
                made += 1
                elapsed += result.seconds
            rate = f"{made / elapsed:.2f} img/s" if elapsed > 0 else ""
            progress.update(bar, images=seen, rate=rate)
            yield result


def _result_json(result: Any) -> dict[str, Any]:
    from dataclasses import asdict

    task = {k: v for k, v in asdict(result.task).items() if k != "edit" or v is not None}
    return {"path": str(result.path), **task, "seconds": round(result.seconds, 4),
            "skipped": result.skipped,
            **({"trajectory": str(result.trajectory_path)} if result.trajectory_path else {})}

