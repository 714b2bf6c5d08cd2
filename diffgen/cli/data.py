"""`diffgen data check` and `diffgen data emoji`: lint a captioned folder, build the emoji data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from diffgen.cli.app import data_app
from diffgen.cli.common import DebugOption, check_output_dir, user_errors
from diffgen.errors import InputError


def print_data_report(data: Path, image_size: int | None) -> Any:
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
        report = print_data_report(data, None)
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
             "'riding' with every animal and vehicle, varied pair layouts) or 'pairs' (drawn like "
             "'composed', 60% two-object scenes) or 'ordered' (as 'pairs', every two-object scene "
             "besides the riding ones 'to the left of' or 'above') or 'groups' (as 'pairs', with 35% "
             "scenes of three or four different objects: rows, stacks, grids).")] = "standard",
    debug: DebugOption = False,
) -> None:
    """Build a captioned folder of emoji scenes (Noto Color Emoji artwork, Apache-2.0)."""
    import time

    with user_errors(debug):
        check_output_dir(out)
        from diffgen.emoji.dataset import build_emoji_dataset

        start = time.perf_counter()
        summary = build_emoji_dataset(out, count, size, seed, font, recipe)
        summary["seconds"] = round(time.perf_counter() - start, 2)
        typer.echo(json.dumps(summary))

