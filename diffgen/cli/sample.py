"""`diffgen sample`: prompts (arguments, a prompt file or a PNG's recipe) to PNGs with their recipes."""

from __future__ import annotations

import json
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
from diffgen.sampling.layout import DEFAULT_LAYOUT_STRENGTH
from diffgen.sampling.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULTS,
    FAST_STEPS,
    SAMPLER_NAMES,
    SCHEDULE_NAMES,
    SamplingSettings,
    default_steps,
    option_name,
)


@app.command()
def sample(
    prompts: Annotated[Optional[list[str]], typer.Argument(
        help="One or more prompts.", show_default=False)] = None,
    num_images: Annotated[int, typer.Option("-n", "--num-images", help="Images per prompt.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Images through the model at once.")] = DEFAULT_BATCH_SIZE,
    seed: Annotated[Optional[int], typer.Option(
        help="Seed of the first image; image k gets seed + k. Default: random (printed).",
        show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(
        help=f"Sampler steps (default {DEFAULTS.steps}; with --fast {FAST_STEPS}).", show_default=False)] = None,
    sampler: Annotated[str, typer.Option(help=f"One of: {', '.join(SAMPLER_NAMES)} (or an AUTOMATIC1111 "
                                              "name such as 'DPM++ 2M').")] = DEFAULTS.sampler,
    schedule: Annotated[str, typer.Option(help=f"Noise schedule: {', '.join(SCHEDULE_NAMES)}.")] = DEFAULTS.schedule,
    guidance: Annotated[float, typer.Option("-g", "--guidance",
                                            help="Classifier-free guidance scale (1 = none).")] = DEFAULTS.guidance,
    negative: Annotated[str, typer.Option(help="Negative prompt (what to steer away from).")] = DEFAULTS.negative,
    fast: Annotated[bool, typer.Option(
        help=f"Sample with the model's distilled student: one forward a step, {FAST_STEPS} steps unless --steps "
        "says otherwise (the sampler and schedule do not apply; no negative prompt). docs/DISTILL.md")] = False,
    student: Annotated[Optional[Path], typer.Option(
        help="With --fast: the student file (default: NAME.student.safetensors beside the checkpoint).",
        show_default=False)] = None,
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
    adapter: Annotated[Optional[list[str]], typer.Option(
        help="Sample with this adapter (diffgen train --adapter): FILE or FILE:WEIGHT (1 = as trained, 0 = "
        "not at all). Repeatable; <lora:NAME:WEIGHT> in a prompt works too.", show_default=False)] = None,
    adapter_dir: Annotated[Optional[Path], typer.Option(
        help="Where <lora:NAME> and --replay find adapters by name (default: $DIFFGEN_ADAPTERS, else ./adapters).",
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
        check_run(num_images, batch_size)  # what needs no torch is refused before torch loads
        settings = option_settings(SamplingSettings(default_steps(steps, fast), sampler, schedule, guidance, negative))
        from diffgen.distributed import device_of, torchrun_env
        from diffgen.sampling.plan import plan_grid, plan_sample
        from diffgen.sampling.request import sample_request
        from diffgen.sampling.run import RunOptions, check_run_options, result_json, write_run
        from diffgen.threads import apply_threads

        request = sample_request(settings, seed,
                                 init_image=init_image, strength=strength, mask=mask, mask_blur=mask_blur,
                                 place=place, layout_strength=layout_strength, auto_layout=auto_layout,
                                 upscale=upscale, fast=fast, name=option_name)
        from diffgen.adapters import adapter_dir as adapters_folder
        from diffgen.adapters import replay_specs, run_adapters

        prompts, specs = run_adapters(prompts or [], adapter or [], adapter_dir)
        shard = torchrun_env()
        if shard.is_main:  # under torchrun the first process checks and holds the folder for all
            check_output_dir(out)
        axes = None
        if xy:
            plan, axes = plan_grid(prompts or [], prompt_file, replay, xy, request)
        else:
            plan = plan_sample(prompts or [], prompt_file, replay, num_images, request)
            plan = plan.numbered_after(out) if new_run else plan
        if plan.replay is not None and (plan.replay.get("adapters") or specs):
            if not plan.replay.get("adapters"):
                raise InputError(f"--replay: {replay} was made without adapters; drop --adapter")
            specs = replay_specs(plan.replay["adapters"], adapters_folder(adapter_dir), specs,
                                 plan.replay_source or Path("the image"))
        student_path = _student_file(fast, plan.replay, checkpoint, student, bool(specs))
        apply_threads(threads)
        options = RunOptions(batch_size, overwrite, trajectory, grid, axes, quiet, shard)
        check_run_options(plan, options)
        model = load_model(checkpoint, device_of(shard, device), image_tower=False)
        if student_path is not None:
            from diffgen.students import attach_student, check_replayed_student

            attached = attach_student(model, student_path)
            if plan.replay is not None:
                check_replayed_student(plan.replay.get("student"), attached, student_path,
                                       plan.replay_source or Path("the image"))
        if specs:
            from diffgen.adapters import attach_adapters

            attach_adapters(model, specs)  # for the whole run; the process ends with it
        say = (lambda message: None) if quiet else (lambda message: typer.echo(message, err=True))

        def show(result: Any) -> None:  # stdout: each image's path, or its JSON line
            if as_json or not result.skipped:
                typer.echo(json.dumps(result_json(result)) if as_json else str(result.path))

        summary = write_run(model, plan, out, options, show, say)
        for path in summary.grids:  # a setting grid's pictures are its results; --grid's a by-product
            if axes:
                typer.echo(str(path))
            else:
                say(f"grid: {path}")
        if summary.skipped:
            say(f"{summary.skipped} image(s) already existed and were skipped (--overwrite to redo)")


def _student_file(fast: bool, replay: dict | None, checkpoint: Path | None, student: Path | None,
                  adapters: bool) -> Path | None:
    """The student file a fast run (or a fast image's replay) samples with, found before the model
    loads; None for a run that is not fast."""
    if not (fast or (replay is not None and replay.get("fast") is True)):
        if student is not None:
            raise InputError("--student is the student file of --fast: add --fast, or drop --student")
        return None
    if adapters:
        raise InputError("--fast samples with the distilled student, which adapters were not trained for: "
                         "drop --adapter (and <lora:...>) or --fast")
    from diffgen.checkpoint import default_checkpoint
    from diffgen.students import find_student

    return find_student(checkpoint or default_checkpoint(), student)
