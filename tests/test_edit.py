"""Image-to-image and inpainting in the engine, against exact answers for Gaussian data."""

from __future__ import annotations

import math

import pytest
import torch

from diffgen.engine.edit import keep_known, sdedit_sigmas, sdedit_start, steps_to_run
from diffgen.engine.samplers import SAMPLERS, STOCHASTIC_SAMPLERS
from diffgen.engine.schedule import karras_sigmas

from .helpers import GAUSSIAN_MU as MU
from .helpers import GAUSSIAN_S as S
from .helpers import gaussian_denoiser


def test_steps_to_run_counts_like_a1111():
    assert [steps_to_run(20, s) for s in (0.0, 0.01, 0.5, 0.6, 0.99, 1.0)] == [0, 1, 10, 12, 19, 20]
    sigmas = karras_sigmas(20, 0.002, 80.0)
    assert torch.equal(sdedit_sigmas(sigmas, 1.0), sigmas)
    assert torch.equal(sdedit_sigmas(sigmas, 0.6), sigmas[8:]) and len(sdedit_sigmas(sigmas, 0.0)) == 1


@pytest.mark.parametrize("name", ["heun", "dpmpp-2m"])
def test_sdedit_follows_the_exact_ode_from_the_noised_input(name):
    """For x0 ~ N(mu, s^2) the ODE carries x at sigma_s to mu + (x - mu) s / sqrt(s^2 + sigma_s^2)."""
    gen = torch.Generator().manual_seed(0)
    image = MU + 0.7 * torch.randn(256, 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(256, 1, generator=gen, dtype=torch.float64)
    sigmas = sdedit_sigmas(karras_sigmas(400, 1e-4, 80.0).double(), 0.5)
    sigma_start = sigmas[0].item()
    x = sdedit_start(image, noise, sigma_start)
    out = SAMPLERS[name](gaussian_denoiser, x.clone(), sigmas)
    exact = MU + (x - MU) * S / math.sqrt(S**2 + sigma_start**2)
    assert (out - exact).abs().max().item() < 5e-4  # second order, 200 steps (x is of size 1)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_inpainting_ends_exactly_on_the_known_region(name):
    gen = torch.Generator().manual_seed(1)
    known = torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    mask[..., :, :2] = 1  # repaint the left half
    noise = torch.randn(known.shape, generator=gen, dtype=torch.float64)
    sigmas = karras_sigmas(12, 0.002, 80.0).double()
    x = sdedit_start(known, noise, sigmas[0].item())

    def noise_sampler(sigma, sigma_next):
        return torch.randn(known.shape, generator=gen, dtype=torch.float64)

    extra = {"noise_sampler": noise_sampler} if name in STOCHASTIC_SAMPLERS else {}
    out = SAMPLERS[name](keep_known(gaussian_denoiser, known, mask), x, sigmas, **extra)
    assert torch.allclose(out[..., 2:], known[..., 2:], atol=1e-9)  # kept
    assert (out[..., :2] - known[..., :2]).abs().max() > 0.1  # repainted
