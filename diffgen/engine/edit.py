"""Editing an existing image with the same denoiser: image-to-image and inpainting.

Image-to-image is SDEdit (Meng et al. 2022): noise the input to a level sigma_start and solve the
reverse process from there, so the result keeps the input's layout and colours where the noise
did not drown them. ``strength`` picks how much of the schedule runs (1 = all of it, from pure
noise; 0 = none: the input back).

Inpainting keeps a known region fixed by wrapping the denoiser: where the mask is 0 the clean-image
estimate is the known image itself. Along the probability-flow ODE dx/dsigma = (x - D) / sigma that
makes x(sigma) = known + sigma * eps in the known region, so it ends exactly on the known image,
and the network sees a consistently noised context while it fills the masked region (the same
replacement RePaint and AUTOMATIC1111's inpainting make, here as one wrapper around D).
"""

from __future__ import annotations

import torch

from diffgen.engine.guidance import Denoise


def steps_to_run(num_steps: int, strength: float) -> int:
    """Sampler steps image-to-image runs: int(num_steps * strength) as AUTOMATIC1111 counts them,
    at least one when strength > 0."""
    if strength <= 0:
        return 0
    return max(1, min(num_steps, int(num_steps * strength)))


def sdedit_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a schedule (``num_steps + 1`` sigmas ending in 0) that image-to-image runs."""
    num_steps = len(sigmas) - 1
    return sigmas[num_steps - steps_to_run(num_steps, strength):]


def sdedit_start(image: torch.Tensor, noise: torch.Tensor, sigma_start: float) -> torch.Tensor:
    """The input noised to ``sigma_start``: x = x0 + sigma_start * eps (eps the image's own noise)."""
    return image + sigma_start * noise


def keep_known(denoise: Denoise, known: torch.Tensor, mask: torch.Tensor) -> Denoise:
    """``denoise`` whose estimate is ``known`` where ``mask`` is 0 and its own where it is 1
    (mask (B, 1, H, W) in [0, 1]; a soft mask blends)."""
    return lambda x, sigma: mask * denoise(x, sigma) + (1 - mask) * known
