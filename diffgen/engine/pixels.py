"""The model's image range and 8-bit pixels: the one place the conversion is written.

Every network here sees images as floats in [-1, 1]; files and the training set hold 8-bit levels.
``to_uint8`` rounds to the nearest level (clamping first), so ``from_uint8(to_uint8(x))`` is the
picture a PNG of ``x`` holds.
"""

from __future__ import annotations

import torch

from diffgen.errors import DiffgenError


def require_finite(images: torch.Tensor, what: str = "an image") -> torch.Tensor:
    """``images`` as they are, or DiffgenError if any value is NaN or infinite: clamped and rounded,
    such values become black (or white) pixels, a picture that looks made but is not. Every image
    written (sampling, upscaling, ``diffgen noise``, training grids) passes here first."""
    if not bool(torch.isfinite(images).all()):
        raise DiffgenError(f"the model produced non-finite values (NaN or infinity) for {what}: nothing was "
                           "written for it (damaged weights, or a setting past what float32 holds?)")
    return images


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Levels 0..255 (any shape and dtype) -> float32 in [-1, 1]."""
    return pixels.float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (values outside are clamped) -> the nearest uint8 levels, same shape."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
