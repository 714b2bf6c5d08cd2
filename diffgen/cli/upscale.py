"""`diffgen upscale`: enlarge existing pictures 2x with the model's upscaler."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffgen.cli.app import app
from diffgen.cli.common import CheckpointOption, DebugOption, ThreadsOption, check_output_dir, load_model, user_errors
from diffgen.errors import InputError


@app.command()
def upscale(
    images: Annotated[list[Path], typer.Argument(help="Pictures to enlarge (PNG, JPEG, ...; at most 512 x 512).",
                                                 show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (each picture keeps its name, as .png).")
                   ] = Path("outputs/upscaled"),
    seed: Annotated[int, typer.Option(
        help="Seed of the upscale's noise for pictures without this model's recipe (a diffgen PNG of "
             "this model uses its own seed).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace output files that already exist.")] = False,
    checkpoint: CheckpointOption = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    threads: ThreadsOption = None,
    debug: DebugOption = False,
) -> None:
    """Enlarge pictures 2x with the model's upscaler; a diffgen PNG of this model keeps its recipe."""
    with user_errors(debug):
        if not 0 <= seed < 2**63:
            raise InputError(f"--seed must be a whole number in [0, 2^63), got {seed}")
        check_output_dir(out)
        from diffgen.fileio import folder_lock
        from diffgen.sampling.upscaling import upscale_files
        from diffgen.threads import apply_threads

        apply_threads(threads)
        model = load_model(checkpoint, device, image_tower=False)
        with folder_lock(out, "diffgen upscale"):
            for result in upscale_files(model, images, out, seed, overwrite):
                if result.note:
                    typer.echo(f"{result.source}: recipe not kept ({result.note})", err=True)
                typer.echo(str(result.path))
