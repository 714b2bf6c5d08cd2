"""The diffgen command line (Typer). Parses, validates, prints; one library call per command.

Nothing heavy is imported at module level: torch and open_clip load inside the commands that need
them, so ``diffgen --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from diffgen import __version__
from diffgen.errors import DiffgenError

app = typer.Typer(
    name="diffgen",
    help="Text-to-image diffusion: sample images from a prompt, train on captioned folders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]


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


@app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help="A diffgen .safetensors checkpoint.")],
    debug: DebugOption = False,
) -> None:
    """Show a checkpoint's config, parameter counts, resolution and content hash."""
    import json

    from rich.console import Console
    from rich.table import Table

    with user_errors(debug):
        from diffgen.checkpoint import load_model

        model = load_model(checkpoint)
        from diffgen.config import config_to_dict

        table = Table(title=str(checkpoint), show_header=False)
        table.add_row("resolution", f"{model.config.image_size} x {model.config.image_size} px")
        table.add_row("content hash", model.content_hash or "")
        for part, count in model.parameter_counts().items():
            table.add_row(f"parameters: {part}", f"{count:,}")
        for key, value in sorted(model.metadata.items()):
            if key not in ("content_hash",):
                table.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
        console = Console()
        console.print(table)
        console.print_json(json.dumps(config_to_dict(model.config)))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="diffgen")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
