"""diffgen: text-to-image diffusion from the command line and as a small library.

The public API (see the README's "Python" section): ``load``, ``Model`` (``sample``, ``encode``),
``SamplingSettings``, ``SAMPLER_NAMES``. Importing diffgen is cheap: torch loads on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "Model", "SamplingSettings", "SAMPLER_NAMES", "__version__"]

_LAZY = {"load": "diffgen.api", "Model": "diffgen.api", "SamplingSettings": "diffgen.sampling.settings",
         "SAMPLER_NAMES": "diffgen.sampling.settings"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffgen' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
