"""The diffgen command line (Typer). Parses, validates, prints; one library call per command.

Nothing heavy is imported at module level: torch and open_clip load inside the commands that need
them, so ``diffgen --help`` answers at once. Every error is one line on stderr with exit code 2
(bad input) or 1 (runtime failure); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

try:  # recent Typer ships its own copy of Click
    from typer._click import exceptions as click_exceptions
except ImportError:  # older Typer runs on Click itself
    from click import exceptions as click_exceptions

from diffgen import __version__
from diffgen.errors import DiffgenError, InputError

SAMPLER_NAMES = "euler, heun, dpmpp-2m, euler-ancestral, dpmpp-2m-sde, edm-stochastic"


class OneLineErrorsGroup(TyperGroup):
    """Click's usage errors (bad option value, unknown option) as one line and exit code 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        no_args_is_help = getattr(click_exceptions, "NoArgsIsHelpError", ())
        try:
            rc = super().main(*args, **kwargs)
        except no_args_is_help as exc:
            typer.echo(exc.format_message())
            sys.exit(0)
        except click_exceptions.UsageError as exc:
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rc if isinstance(rc, int) else 0)


app = typer.Typer(
    name="diffgen",
    cls=OneLineErrorsGroup,
    help="Text-to-image diffusion: sample images from a prompt, train on captioned folders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
CheckpointOption = Annotated[Optional[Path], typer.Option(
    "-c", "--checkpoint", help="Model checkpoint (.safetensors). Default: $DIFFGEN_CHECKPOINT, "
    "else the embedded default model.", show_default=False)]


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn DiffgenError into one line on stderr and its exit code (2 bad input, 1 runtime)."""
    try:
        yield
    except DiffgenError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - an unexpected failure is still one line
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        raise typer.Exit(1) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffgen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """diffgen: text-to-image diffusion from the command line."""


def _load_model(checkpoint: Path | None, device: str = "cpu") -> Any:
    from diffgen.checkpoint import load_model
    from diffgen.devices import pick_device
    from diffgen.generate import default_checkpoint

    return load_model(checkpoint or default_checkpoint(), pick_device(device))


def _check_output_dir(out: Path) -> None:
    """Refuse an output folder that is a file or cannot be created/written, before any work.

    A missing folder is created and removed again: permission bits do not tell (root passes every
    access check, and some file systems, like /proc, refuse new folders to everyone)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"output path {out} is inside a file ({existing})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"output folder {existing} is not writable")
    if existing != out:
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            raise InputError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
        finally:
            _remove_empty_up_to(out, existing)


def _remove_empty_up_to(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents below ``stop`` while they exist and are empty."""
    while path != stop and path.is_dir():
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def _check_settings(num_images: int, batch_size: int, steps: int, guidance: float,
                    seed: int | None) -> None:
    if num_images < 1:
        raise InputError(f"-n/--num-images must be at least 1, got {num_images}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise InputError(f"-g/--guidance must be a finite number >= 0, got {guidance}")
    if seed is not None and not 0 <= seed < 2**63:
        raise InputError(f"--seed must be in [0, 2^63), got {seed}")


@app.command()
def sample(
    prompts: Annotated[Optional[list[str]], typer.Argument(
        help="One or more prompts.", show_default=False)] = None,
    num_images: Annotated[int, typer.Option("-n", "--num-images", help="Images per prompt.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Images through the model at once.")] = 8,
    seed: Annotated[Optional[int], typer.Option(
        help="Seed of the first image; image k gets seed + k. Default: random (printed).",
        show_default=False)] = None,
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 20,
    sampler: Annotated[str, typer.Option(help=f"One of: {SAMPLER_NAMES}.")] = "dpmpp-2m",
    schedule: Annotated[str, typer.Option(help="Noise schedule: karras, exponential or vp.")] = "karras",
    guidance: Annotated[float, typer.Option("-g", "--guidance",
                                            help="Classifier-free guidance scale (1 = none).")] = 3.0,
    negative: Annotated[str, typer.Option(help="Negative prompt (what to steer away from).")] = "",
    checkpoint: CheckpointOption = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("outputs"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps (auto picks the best; "
                                             "bf16 on CUDA).")] = "auto",
    prompt_file: Annotated[Optional[Path], typer.Option(
        "-f", "--prompt-file", help=".txt (one prompt per line) or .jsonl (objects with prompt and "
        "optional negative, n, seed, steps, guidance, sampler).", show_default=False)] = None,
    replay: Annotated[Optional[Path], typer.Option(
        help="Regenerate the image whose recipe is stored in this PNG.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose files already exist.")] = False,
    grid: Annotated[bool, typer.Option(help="Also write one labelled grid of the run.")] = False,
    trajectory: Annotated[bool, typer.Option(
        help="Also write, per image, a strip of the clean-image estimate at each step.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or messages.")] = False,
    debug: DebugOption = False,
) -> None:
    """Generate images from prompts; PNGs carry their recipe (A1111 `parameters` + diffgen JSON)."""
    from diffgen.prompts import PromptSpec, read_prompt_file

    with user_errors(debug):
        _check_settings(num_images, batch_size, steps, guidance, seed)
        _check_output_dir(out)
        specs: list[PromptSpec] = [PromptSpec(p, num_images) for p in prompts or []]
        if prompt_file is not None:
            specs += read_prompt_file(prompt_file, num_images)
        replay_recipe = None
        if replay is not None:
            from diffgen.images import read_recipe

            replay_recipe = read_recipe(replay)
        elif not specs:
            raise InputError("no prompt given: pass PROMPT ..., -f PROMPT_FILE or --replay IMAGE.png")
        if any(not s.prompt.strip() for s in specs):
            raise InputError("empty prompt given; use --negative for what to avoid")

        from diffgen.generate import ImageTask, plan_tasks, task_from_recipe

        random_seed = False
        if replay_recipe is not None:
            tasks = [task_from_recipe(replay_recipe)]
            overwrite = True  # a replay is asked for explicitly
        else:
            random_seed = seed is None
            seed = secrets.randbelow(2**31) if seed is None else seed
            defaults = ImageTask(index=0, prompt="", seed=0, negative=negative, steps=steps,
                                 sampler=sampler, schedule=schedule, guidance=guidance)
            tasks = plan_tasks(specs, seed, defaults)
        model = _load_model(checkpoint, device)
        if random_seed and not quiet:
            typer.echo(f"seed: {seed}", err=True)
        model_name = (checkpoint.stem if checkpoint else "default")
        if replay_recipe is not None:
            if replay_recipe.get("model_hash") != model.content_hash and not quiet:
                typer.echo(f"warning: {replay} was made by model {replay_recipe.get('model_hash', '?')[:10]}"
                           f", this is {model.content_hash[:10]}: the image will differ", err=True)
            model_name = replay_recipe.get("model", model_name)
        _warn_truncated(model, tasks, quiet)
        results = []
        for result in _run_with_progress(model, tasks, out, model_name, batch_size, overwrite,
                                         trajectory, quiet):
            results.append(result)
            if as_json:
                typer.echo(json.dumps(_result_json(result)))
            elif not result.skipped:
                typer.echo(str(result.path))
        if grid:
            from PIL import Image

            from diffgen.images import labelled_grid, save_png

            images = []
            for r in results:
                with Image.open(r.path) as image:
                    images.append(image.convert("RGB"))
            grid_path = out / f"grid-{tasks[0].index:05d}-{tasks[0].seed}.png"
            save_png(labelled_grid(images, [f"{r.task.prompt} ({r.task.seed})" for r in results]),
                     grid_path)
            if not quiet:
                typer.echo(f"grid: {grid_path}", err=True)
        skipped = sum(r.skipped for r in results)
        if skipped and not quiet:
            typer.echo(f"{skipped} image(s) already existed and were skipped (--overwrite to redo)",
                       err=True)


def _warn_truncated(model: Any, tasks: list, quiet: bool) -> None:
    if quiet:
        return
    prompts = sorted({t.prompt for t in tasks} | {t.negative for t in tasks if t.negative})
    _, counts = model.text_encoder.tokenize(prompts)
    limit = model.text_encoder.context_length
    for prompt, count in zip(prompts, counts):
        if count > limit:
            typer.echo(f"warning: prompt '{prompt[:40]}...' has {count} tokens; only the first "
                       f"{limit} are used", err=True)


def _run_with_progress(model: Any, tasks: list, out: Path, model_name: str, batch_size: int,
                       overwrite: bool, trajectory: bool, quiet: bool) -> Iterator[Any]:
    """Yield each ImageResult as it is written, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from diffgen.generate import write_images

    total_steps = sum(t.steps for t in tasks)
    progress = Progress(
        TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(),
        TextColumn("images {task.fields[images]}/{task.fields[total_images]}"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=quiet, transient=False,
    )
    with progress:
        bar = progress.add_task("sample", total=total_steps, images=0, total_images=len(tasks), rate="")
        elapsed, made, seen = 0.0, 0, 0
        for result in write_images(model, tasks, out, model_name, batch_size, overwrite, trajectory,
                                   on_step=lambda n: progress.advance(bar, n)):
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

    return {"path": str(result.path), **asdict(result.task), "seconds": round(result.seconds, 4),
            "skipped": result.skipped,
            **({"trajectory": str(result.trajectory_path)} if result.trajectory_path else {})}


@app.command()
def encode(
    texts: Annotated[list[str], typer.Argument(help="Prompts to encode.")],
    checkpoint: CheckpointOption = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Write ids, per-token states and pooled embeddings (.safetensors).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    debug: DebugOption = False,
) -> None:
    """Show what the text encoder sees: token counts, pooled norms, cosine similarities."""
    with user_errors(debug):
        if output is not None:
            _check_output_dir(output.parent)
            if output.is_dir():
                raise InputError(f"output {output} is a folder; give a .safetensors file name")
        from diffgen.encode import encode_report, save_encoding

        model = _load_model(checkpoint)
        report = encode_report(model, texts)
        if output is not None:
            save_encoding(output, report, model)
        enc = report.encoding
        if as_json:
            typer.echo(json.dumps({
                "prompts": [{"prompt": p, "num_tokens": n, "truncated": t, "pooled_norm": round(v, 6)}
                            for p, n, t, v in zip(texts, enc.num_tokens, enc.truncated,
                                                  report.pooled_norms)],
                "cosine": [[round(c, 6) for c in row] for row in report.cosine],
                "context_length": report.context_length,
                **({"output": str(output)} if output else {}),
            }))
            return
        _print_encode_tables(report)


def _print_encode_tables(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    enc = report.encoding
    table = Table(title=f"text encoder (context {report.context_length} tokens)")
    for column in ("#", "prompt", "tokens", "pooled norm"):
        table.add_column(column, justify="right" if column != "prompt" else "left")
    for i, (prompt, count, cut, norm) in enumerate(
            zip(report.prompts, enc.num_tokens, enc.truncated, report.pooled_norms)):
        tokens = f"[red]{count} (truncated to {report.context_length})[/red]" if cut else str(count)
        table.add_row(str(i), prompt, tokens, f"{norm:.3f}")
    console.print(table)
    if len(report.prompts) > 1:
        sim = Table(title="cosine similarity of pooled embeddings")
        sim.add_column("")
        for i in range(len(report.prompts)):
            sim.add_column(str(i), justify="right")
        for i, row in enumerate(report.cosine):
            sim.add_row(str(i), *[f"{c:.3f}" for c in row])
        console.print(sim)


data_app = typer.Typer(help="Work with captioned image folders.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_data_report(data: Path, image_size: int | None) -> Any:
    from diffgen.data import scan_folder

    report = scan_folder(data)
    for line in report.summary_lines(image_size):
        typer.echo(line)
    return report


@data_app.command("check")
def data_check(
    data: Annotated[Path, typer.Argument(help="Folder of images with .txt captions or metadata.jsonl.")],
    debug: DebugOption = False,
) -> None:
    """Lint a captioned folder: counts, unreadable images, missing or long captions, duplicates."""
    with user_errors(debug):
        report = _print_data_report(data, None)
        if not report.items:
            raise InputError(f"no usable image-caption pairs in {data}")


@data_app.command("emoji")
def data_emoji(
    out: Annotated[Path, typer.Argument(help="Folder to write (images/, metadata.jsonl, heldout.json).")],
    count: Annotated[int, typer.Option(help="Number of scenes.")] = 20000,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same folder.")] = 0,
    font: Annotated[Optional[Path], typer.Option(
        help="NotoColorEmoji.ttf (default: the usual install paths).", show_default=False)] = None,
    recipe: Annotated[str, typer.Option(
        help="Scene mix: 'standard' (the shipped model's data) or 'composed' (more single objects, "
             "'riding' with every animal and vehicle, varied pair layouts).")] = "standard",
    debug: DebugOption = False,
) -> None:
    """Build a captioned folder of emoji scenes (Noto Color Emoji artwork, Apache-2.0)."""
    import time

    with user_errors(debug):
        _check_output_dir(out)
        from diffgen.emoji_data import build_emoji_dataset

        start = time.perf_counter()
        summary = build_emoji_dataset(out, count, size, seed, font, recipe)
        summary["seconds"] = round(time.perf_counter() - start, 2)
        typer.echo(json.dumps(summary))


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Folder of images with .txt captions or metadata.jsonl.")],
    out: Annotated[Optional[Path], typer.Option(
        "-o", "--out", help="Run folder (default: runs/<data folder name>).", show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="TOML config (default: the built-in default, configs/default.toml).",
        show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Diffusion training steps (overrides the config).",
                                                 show_default=False)] = None,
    clip_steps: Annotated[Optional[int], typer.Option(help="CLIP training steps (overrides the config).",
                                                      show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Per-process batch size (overrides the config).",
                                                      show_default=False)] = None,
    text_encoder: Annotated[Optional[str], typer.Option(
        help="Use this text encoder instead of training one: a diffgen checkpoint, or ARCH:PRETRAINED "
        "for open_clip (a tag or a local .safetensors file).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in the -o folder from its last state.")] = False,
    init: Annotated[Optional[Path], typer.Option(
        help="Start from this diffgen checkpoint's weights (U-Net and text encoder; the CLIP stage is "
        "skipped): fine-tuning, or more training for a released model. --config must match its model.",
        show_default=False)] = None,
    time_limit: Annotated[Optional[float], typer.Option(
        help="Minutes: end the diffusion stage once the run has taken this long, saving the state "
        "and the model (--resume goes on to --steps).", show_default=False)] = None,
    weights_dtype: Annotated[str, typer.Option(
        help="Storage type of model.safetensors: float32, float16 (half the size) or bfloat16.")] = "float32",
    check: Annotated[bool, typer.Option(help="Only lint the data folder, do not train.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or messages.")] = False,
    debug: DebugOption = False,
) -> None:
    """Train a CLIP text encoder and a U-Net from scratch on a captioned folder (torchrun for DDP)."""
    import dataclasses

    with user_errors(debug):
        from diffgen.config import Config, load_config

        cfg = load_config(config) if config is not None else Config()
        overrides = {k: v for k, v in (("steps", steps), ("clip_steps", clip_steps),
                                       ("batch_size", batch_size)) if v is not None}
        for key, value in overrides.items():
            if value < (0 if key == "clip_steps" else 1):
                raise InputError(f"--{key.replace('_', '-')} must be at least {0 if key == 'clip_steps' else 1}")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides))
        if time_limit is not None and not time_limit > 0:
            raise InputError(f"--time-limit must be a positive number of minutes, got {time_limit}")
        if check:
            report = _print_data_report(data, cfg.image_size)
            if not report.items:
                raise InputError(f"no usable image-caption pairs in {data}")
            return
        from diffgen.train import TrainOptions, run_training

        out = out or Path("runs") / data.resolve().name
        _check_output_dir(out)
        log = (lambda message: None) if quiet else (lambda message: typer.echo(message, err=True))
        summary = run_training(TrainOptions(
            data, out, cfg, resume, text_encoder, device, progress=not quiet, log=log,
            time_limit=None if time_limit is None else 60 * time_limit, weights_dtype=weights_dtype,
            init=init))
        if not quiet and int(os.environ.get("RANK", "0")) == 0:
            typer.echo(f"model: {out / 'model.safetensors'}", err=True)
        if int(os.environ.get("RANK", "0")) == 0:
            typer.echo(json.dumps(summary))


def _number_list(text: str, kind: type, option: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{option} must be a comma-separated list of numbers, got '{text}'") from None
    if not values:
        raise InputError(f"{option} is empty")
    return values


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Argument(help="The captioned folder the model was trained on "
                                              "(its held-out split is the reference).")],
    checkpoint: CheckpointOption = None,
    samplers: Annotated[str, typer.Option(help="Comma-separated sampler names.")] = "dpmpp-2m",
    steps: Annotated[str, typer.Option(help="Comma-separated step counts.")] = "5,10,20,50",
    guidance: Annotated[str, typer.Option("-g", "--guidance", help="Comma-separated guidance scales.")] = "3",
    images: Annotated[int, typer.Option(help="Images per setting (and per real set).")] = 500,
    batch_size: Annotated[int, typer.Option(help="Images through the model at once.")] = 64,
    prompt_file: Annotated[Optional[list[Path]], typer.Option(
        "-f", "--prompt-file", help="Also measure prompt agreement on this prompt set (e.g. held-out "
        "object pairs); repeatable.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Write eval.json, eval.md and "
                                                "eval.png (FD vs steps) here.", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    debug: DebugOption = False,
) -> None:
    """Measure quality: Fréchet distance and KID to held-out real images, CLIP score and retrieval,
    over samplers x steps x guidance, in the feature space of the checkpoint's own CLIP."""
    with user_errors(debug):
        step_list = _number_list(steps, int, "--steps")
        scales = _number_list(guidance, float, "--guidance")
        names = [n.strip() for n in samplers.split(",") if n.strip()]
        if images < 10 or batch_size < 1 or min(step_list) < 1 or \
                not all(math.isfinite(g) and g >= 0 for g in scales):
            raise InputError("--images must be >= 10, --batch-size >= 1, steps >= 1, guidance >= 0")
        if out is not None:
            _check_output_dir(out)
        from diffgen.evaluate import markdown_table, run_eval, sweep_chart
        from diffgen.samplers import SAMPLERS

        unknown = [n for n in names if n not in SAMPLERS]
        if unknown:
            raise InputError(f"unknown sampler '{unknown[0]}' (choose from: {', '.join(SAMPLERS)})")
        model = _load_model(checkpoint, device)

        def show(row: dict) -> None:
            if not as_json:
                typer.echo(f"{row['sampler']:>16} steps {row['steps']:>4} g {row['guidance']:<4g} "
                           f"FD {row['fd']:.4f}  KID {row['kid'] * 1e3:.3f}e-3  CLIP {row['clip_score']:.2f}  "
                           f"top-1 {row['retrieval_top1']:.3f}  ({row['seconds']} s)", err=True)

        from diffgen.evaluate import prompt_set_agreement
        from diffgen.prompts import read_prompt_file

        prompt_sets = {str(f): [s.prompt for s in read_prompt_file(f, 1)] for f in prompt_file or []}
        result = run_eval(model, data, names, step_list, scales, images, batch_size, on_result=show)
        result["prompt_sets"] = {
            name: prompt_set_agreement(model, prompts, 4, names[0], max(step_list), scales[0], batch_size)
            for name, prompts in prompt_sets.items()}
        result["checkpoint"] = str(checkpoint) if checkpoint else "default"
        result["model_hash"] = model.content_hash
        if out is not None:
            from diffgen.fileio import atomic_write
            from diffgen.images import save_png

            atomic_write(out / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
            atomic_write(out / "eval.md", lambda tmp: Path(tmp).write_text(markdown_table(result) + "\n"))
            save_png(sweep_chart(result), out / "eval.png")
        typer.echo(json.dumps(result) if as_json else markdown_table(result))


@app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help="A diffgen .safetensors checkpoint.")],
    debug: DebugOption = False,
) -> None:
    """Show a checkpoint's config, parameter counts, resolution, hash and training summary."""
    from rich.console import Console
    from rich.table import Table

    with user_errors(debug):
        from diffgen.config import config_to_dict

        model = _load_model(checkpoint)
        table = Table(title=str(checkpoint), show_header=False)
        table.add_row("resolution", f"{model.config.image_size} x {model.config.image_size} px")
        table.add_row("content hash", model.content_hash or "")
        for part, count in model.parameter_counts().items():
            table.add_row(f"parameters: {part}", f"{count:,}")
        for key, value in sorted(model.metadata.items()):
            if key != "content_hash":
                table.add_row(key, value if isinstance(value, str) else json.dumps(value))
        console = Console()
        console.print(table)
        console.print_json(json.dumps(config_to_dict(model.config)))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="diffgen")


if __name__ == "__main__":  # pragma: no cover
    main()
