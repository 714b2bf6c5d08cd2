"""The diffgen command line (Typer). Parses, validates, prints; one library call per command.

Nothing heavy is imported at module level: torch and open_clip load inside the commands that need
them, so ``diffgen --help`` answers at once. Every error is one line on stderr with exit code 2
(bad input) or 1 (runtime failure); ``--debug`` adds the traceback. One module per command group:
sample, upscale, encode, data, train, evaluate (eval and info), noise, serve; common holds what they
share.
"""

from __future__ import annotations

from diffgen.cli import data, encode, evaluate, noise, sample, serve, train, upscale  # noqa: F401  (registers them)
from diffgen.cli.app import app
from diffgen.sampling.settings import SAMPLER_NAMES

__all__ = ["app", "main", "SAMPLER_NAMES"]


def main() -> None:
    """Console-script entry point."""
    app(prog_name="diffgen")
