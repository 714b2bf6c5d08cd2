"""CPU threads for torch, from an option or the environment (no torch import until one is set)."""

from __future__ import annotations

from diffgen.errors import InputError

THREADS_ENV = "DIFFGEN_THREADS"


def apply_threads(threads: int | None) -> int | None:
    """Set torch's CPU threads from ``threads`` or $DIFFGEN_THREADS (None: torch's default, one per
    core). On a machine where other work holds the cores, fewer threads than cores is faster:
    OpenMP threads that wait for each other's turn cost more than they add (docs/BENCHMARKS.md)."""
    import os

    if threads is None and os.environ.get(THREADS_ENV):
        try:
            threads = int(os.environ[THREADS_ENV])
        except ValueError:
            raise InputError(f"${THREADS_ENV} must be a whole number, got '{os.environ[THREADS_ENV]}'") from None
    if threads is None:
        return None
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    return threads
