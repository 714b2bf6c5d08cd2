"""What every command shares: one-line errors, common options, output-folder checks, model loading."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from diffgen.errors import DiffgenError, InputError, Terminated
from diffgen.sampling.settings import SamplingSettings, checked_settings, option_name

DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads (default: $DIFFGEN_THREADS, else one per core). Use fewer on a busy "
    "machine.", show_default=False)]
CheckpointOption = Annotated[Optional[Path], typer.Option(
    "-c", "--checkpoint", help="Model checkpoint (.safetensors). Default: $DIFFGEN_CHECKPOINT, "
    "else the embedded default model.", show_default=False)]


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn DiffgenError into one line on stderr and its exit code (2 bad input, 1 runtime)."""
    previous = _raise_on_sigterm()
    try:
        yield
    except Terminated:
        typer.echo("terminated", err=True)
        raise typer.Exit(Terminated.exit_code) from None
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm():
    """Make SIGTERM raise Terminated (handled like Ctrl-C); returns the previous handler, or None
    outside the main thread (where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def load_model(checkpoint: Path | None, device: str = "cpu", image_tower: bool = True) -> Any:
    """The checkpoint (or the default model) on ``device``; ``image_tower=False`` for commands
    that only sample or encode text (a faster start, see engine/clip_text.py)."""
    from diffgen.checkpoint import default_checkpoint, load_model
    from diffgen.devices import pick_device

    return load_model(checkpoint or default_checkpoint(), pick_device(device), image_tower=image_tower)


def check_output_dir(out: Path) -> None:
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
        except FileExistsError:
            return  # another process made it meanwhile (torchrun's other ranks): theirs to keep
        except OSError as exc:
            remove_empty_up_to(out, existing)  # the parents it made before failing
            raise InputError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
        remove_empty_up_to(out, existing)


def remove_empty_up_to(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents below ``stop`` while they exist and are empty."""
    while path != stop and path.is_dir():
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def check_run(num_images: int, batch_size: int) -> None:
    if num_images < 1:
        raise InputError(f"-n/--num-images must be at least 1, got {num_images}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")


def option_settings(settings: SamplingSettings) -> SamplingSettings:
    """``settings.validate()``, its messages naming the command-line option."""
    return checked_settings(settings, option_name)

