"""`diffgen noise`: the forward process of an image, and the model's one-step estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffgen.cli.app import app
from diffgen.cli.common import CheckpointOption, DebugOption, check_output_dir, load_model, user_errors
from diffgen.errors import InputError


@app.command()
def noise(
    image: Annotated[Path, typer.Argument(help="The image to destroy with noise.")],
    sigmas: Annotated[str, typer.Option(help="Comma-separated noise levels.")] = "0.1,0.5,1,2,5,20,80",
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write the strip (.png).")] = Path("noise.png"),
    denoise: Annotated[bool, typer.Option(help="Add a row of the model's one-step estimates D(x, sigma).")] = False,
    prompt: Annotated[str, typer.Option(help="The caption the estimates are conditioned on.")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the noise image (one for all levels).")] = 0,
    checkpoint: CheckpointOption = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
    debug: DebugOption = False,
) -> None:
    """Draw an image at increasing noise levels (the forward process), labelled with sigma and SNR."""
    with user_errors(debug):
        try:
            levels = [float(v) for v in sigmas.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--sigmas must be a comma-separated list of numbers, got '{sigmas}'") from None
        if image.is_dir():
            raise InputError(f"{image} is a folder, not an image")
        if not image.is_file():
            raise InputError(f"image not found: {image}")
        check_output_dir(out.parent)
        if out.is_dir():
            raise InputError(f"output {out} is a folder; give a .png file name")
        from diffgen.sampling.forward import forward_strip
        from diffgen.sampling.images import save_png

        model = load_model(checkpoint, device, image_tower=False) if denoise else None
        save_png(forward_strip(image, levels, seed, model, prompt), out)
        typer.echo(str(out))
