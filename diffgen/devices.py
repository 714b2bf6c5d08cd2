"""Which device to run on, and which arithmetic to use there."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

from diffgen.errors import InputError


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but no CUDA GPU is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for, but Apple MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device '{name}' (choose from: auto, cpu, cuda, mps)")
    return torch.device(name)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 dot-product units (AVX512-BF16 or AMX), per /proc/cpuinfo.

    On those, oneDNN runs bf16 convolutions and matrix products at a multiple of the float32
    rate (2.4x for a 64 px training step on an AMD EPYC with AVX512-BF16, docs/BENCHMARKS.md);
    elsewhere bf16 is emulated and slower than float32.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether a run with ``precision`` ("auto", "float32", "bfloat16") computes in bf16 on ``device``."""
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return precision == "bfloat16"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``uses_bf16``, else a no-op context."""
    if uses_bf16(device, precision) and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

