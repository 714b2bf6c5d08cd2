"""The Typer application and its one-line error handling; commands register on it."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # recent Typer ships its own copy of Click
    from typer._click import exceptions as click_exceptions
except ImportError:  # older Typer runs on Click itself
    from click import exceptions as click_exceptions  # type: ignore[no-redef]  # the same module under another name

from diffgen import __version__


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
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Work with captioned image folders.", no_args_is_help=True)
app.add_typer(data_app, name="data")


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

