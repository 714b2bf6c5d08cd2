"""`diffgen eval` and `diffgen info`: measure a checkpoint's quality, show what it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffgen.cli.app import app
from diffgen.cli.common import CheckpointOption, DebugOption, check_output_dir, load_model, option_settings, user_errors
from diffgen.errors import InputError
from diffgen.sampling.settings import SamplingSettings


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
        if images < 10 or batch_size < 1:
            raise InputError("--images must be >= 10 and --batch-size >= 1")
        # each value is checked as a sampling setting before the model loads
        names = [option_settings(SamplingSettings(sampler=name)).sampler for name in names]
        for value in step_list:
            option_settings(SamplingSettings(steps=value))
        for value in scales:
            option_settings(SamplingSettings(guidance=value))
        if out is not None:
            check_output_dir(out)
        from diffgen.evaluate import markdown_table, run_eval, write_eval
        model = load_model(checkpoint, device)

        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from diffgen.evaluate import prompt_set_agreement
        from diffgen.progress import progress
        from diffgen.sampling.prompts import read_prompt_file

        cells = len(names) * len(step_list) * len(scales)
        bar_view = progress("eval", TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), disable=as_json)

        def show(row: dict) -> None:
            bar_view.advance(bar, 1)
            if not as_json:
                typer.echo(f"{row['sampler']:>16} steps {row['steps']:>4} g {row['guidance']:<4g} "
                           f"FD {row['fd']:.4f}  KID {row['kid'] * 1e3:.3f}e-3  CLIP {row['clip_score']:.2f}  "
                           f"top-1 {row['retrieval_top1']:.3f}  ({row['seconds']} s)", err=True)

        prompt_sets = {str(f): [s.prompt for s in read_prompt_file(f, 1)] for f in prompt_file or []}
        with bar_view:
            bar = bar_view.add_task("eval", total=cells)
            result = run_eval(model, data, names, step_list, scales, images, batch_size, on_result=show)
        if result["floor"]["images"] <= result["feature_dim"]:
            # a covariance of d features from n <= d images is singular: FD and KID are not meaningful
            typer.echo(f"warning: {result['floor']['images']} images for {result['feature_dim']}-dimensional "
                       f"features: FD and KID need more images than dimensions (use --images "
                       f"{2 * result['feature_dim']} or more, and as many held-out images)", err=True)
        result["prompt_sets"] = {
            name: prompt_set_agreement(model, prompts, 4, names[0], max(step_list), scales[0], batch_size)
            for name, prompts in prompt_sets.items()}
        result["checkpoint"] = str(checkpoint) if checkpoint else "default"
        result["model_hash"] = model.content_hash
        if out is not None:
            write_eval(result, out)
        typer.echo(json.dumps(result) if as_json else markdown_table(result))


@app.command()
def info(
    checkpoint: Annotated[Optional[Path], typer.Argument(
        help="A diffgen .safetensors checkpoint (default: the embedded default model).", show_default=False)] = None,
    debug: DebugOption = False,
) -> None:
    """Show a checkpoint's resolution, hash, parameter counts, training summary and config (TOML)."""
    from rich.console import Console
    from rich.table import Table

    with user_errors(debug):
        from diffgen.config import config_to_toml

        model = load_model(checkpoint)
        table = Table(title=str(checkpoint or "the embedded default model"), show_header=False)
        table.add_row("resolution", f"{model.config.image_size} x {model.config.image_size} px")
        table.add_row("content hash", model.content_hash or "")
        for part, count in model.parameter_counts().items():
            table.add_row(f"parameters: {part}", f"{count:,}")
        for key, value in sorted(model.metadata.items()):
            if key in ("content_hash", "training"):
                continue
            table.add_row(key, value if isinstance(value, str) else json.dumps(value))
        for key, value in sorted((model.metadata.get("training") or {}).items()):
            shown = value if isinstance(value, (str, int, float)) else json.dumps(value)
            table.add_row(f"training: {key}", f"{shown:,}" if isinstance(shown, int) else str(shown))
        console = Console()
        console.print(table)
        typer.echo(config_to_toml(model.config))


config_app = typer.Typer(help="The model and training config presets.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    name: Annotated[str, typer.Argument(help="A preset name or a TOML file.")] = "default",
    debug: DebugOption = False,
) -> None:
    """Print a config preset as TOML, ready to copy and edit (`diffgen config show gpu64 > my.toml`)."""
    with user_errors(debug):
        from diffgen.config import config_to_toml, load_config
        from diffgen.presets import config_path

        typer.echo(config_to_toml(load_config(config_path(name))), nl=False)


@config_app.command("list")
def config_list() -> None:
    """The preset names."""
    from diffgen.presets import preset_names

    typer.echo("\n".join(preset_names()))
