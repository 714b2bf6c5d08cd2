"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around the denoiser.

D_guided = D_uncond + w (D_cond - D_uncond). Mixing denoised images is the same as mixing noise
predictions, because eps = (x - D) / sigma is affine in D with the same x and sigma.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffgen.engine.denoiser import Conditioning

ConditionalDenoiser = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def classifier_free_guidance(
    model: ConditionalDenoiser, cond: Conditioning, uncond: Conditioning, guidance_scale: float
) -> Denoise:
    """Bind conditioning into ``denoise(x, sigma) -> x0_hat`` with guidance scale ``guidance_scale``.

    ``cond`` has batch 1 or B (one row per image); ``uncond`` (the empty or negative prompt) batch 1
    or B. Scale 1 is the conditional model alone and 0 the unconditional one, each at the cost of one
    half-size forward; any other scale runs both halves in ONE batched forward pass.
    """
    if guidance_scale == 1.0:
        return lambda x, sigma: model(x, sigma, cond.expand(x.shape[0]))
    if guidance_scale == 0.0:
        return lambda x, sigma: model(x, sigma, uncond.expand(x.shape[0]))
    paired: dict[int, Conditioning] = {}  # built once per batch size, not once per step

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if batch not in paired:
            paired[batch] = Conditioning.cat([cond.expand(batch), uncond.expand(batch)])
        x0_cond, x0_uncond = model(torch.cat([x, x]), torch.cat([sigma, sigma]), paired[batch]).chunk(2)
        return x0_uncond + guidance_scale * (x0_cond - x0_uncond)

    return denoise
