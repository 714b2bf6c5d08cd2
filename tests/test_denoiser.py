"""EDM preconditioning and loss against the formulas of Karras et al. 2022, Table 1."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffgen.engine.denoiser import (
    Conditioning,
    Denoiser,
    edm_loss,
    eps_from_x0,
    sample_training_sigmas,
    x0_from_eps,
)


class Recorder(nn.Module):
    """A stand-in network that records its inputs and returns a fixed output."""

    def __init__(self, output: float):
        super().__init__()
        self.output = output
        self.weight = nn.Parameter(torch.zeros(()))
        self.seen = {}

    def forward(self, x, c_noise, tokens, pooled):
        self.seen = {"x": x, "c_noise": c_noise}
        return torch.full_like(x, self.output) + self.weight


def cond(batch: int) -> Conditioning:
    return Conditioning(torch.zeros(batch, 3, 4), torch.zeros(batch, 2))


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 80.0])
def test_preconditioning_coefficients(sigma):
    sd = 0.5
    net = Recorder(output=2.0)
    x = torch.randn(2, 3, 4, 4)
    out = Denoiser(net, sd)(x, torch.full((2,), sigma), cond(2))
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
    c_in = 1 / math.sqrt(sigma**2 + sd**2)
    assert torch.allclose(out, c_skip * x + c_out * 2.0, atol=1e-5)
    assert torch.allclose(net.seen["x"], c_in * x, atol=1e-6)
    assert torch.allclose(net.seen["c_noise"], torch.full((2,), math.log(sigma) / 4))


def test_scalar_sigma_broadcasts():
    net = Recorder(output=0.0)
    x = torch.randn(3, 1, 2, 2)
    assert torch.equal(Denoiser(net)(x, 1.5, cond(3)), Denoiser(net)(x, torch.full((3,), 1.5), cond(3)))


def test_eps_and_x0_identity_round_trips():
    x, x0 = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    sigma = torch.rand(4, 1, 1, 1) + 0.1
    eps = eps_from_x0(x, x0, sigma)
    assert torch.allclose(x0_from_eps(x, eps, sigma), x0, atol=1e-6)
    assert torch.allclose(x0 + sigma * eps, x, atol=1e-6)


def test_training_sigmas_are_log_normal():
    gen = torch.Generator().manual_seed(0)
    log_sigma = sample_training_sigmas(200_000, -1.2, 1.2, gen).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.01)


def test_loss_is_mse_of_f_against_its_effective_target():
    # With F = 0 the loss is E[lambda (c_skip x - x0)^2] = E[(c_skip x - x0)^2 / c_out^2]; for
    # x0 = 0 that is c_skip^2 sigma^2 n^2 / c_out^2 = sd^2 / (sigma^2 + sd^2) * n^2 per sample.
    sd = 0.5
    den = Denoiser(Recorder(output=0.0), sd)
    x0 = torch.zeros(4096, 1, 4, 4)
    gen = torch.Generator().manual_seed(3)
    loss = edm_loss(den, x0, cond(4096), generator=gen)
    gen = torch.Generator().manual_seed(3)
    sigma = sample_training_sigmas(4096, -1.2, 1.2, gen)
    noise = torch.randn(x0.shape, generator=gen)
    expected = (sd**2 / (sigma**2 + sd**2)) * noise.pow(2).mean(dim=(1, 2, 3))
    assert loss.shape == (4096,)
    assert torch.allclose(loss, expected, rtol=1e-4)


def test_the_denoiser_carries_its_sigma_range_and_sampling_uses_it(tiny_config):
    from diffgen.engine.model import build_model
    from diffgen.sampling.generate import ImageTask, generate

    torch.manual_seed(0)
    model = build_model(tiny_config)
    assert (model.denoiser.sigma_min, model.denoiser.sigma_max) == (tiny_config.denoiser.sigma_min,
                                                                    tiny_config.denoiser.sigma_max)
    seen = []
    model.denoiser.register_forward_pre_hook(lambda module, args: seen.append(float(args[1].reshape(-1)[0])))
    list(generate(model, [ImageTask(0, "a cat", 0, steps=3, guidance=1.0)], batch_size=1))
    assert seen[0] == pytest.approx(tiny_config.denoiser.sigma_max)
    model.denoiser.sigma_max = 20.0
    seen.clear()
    list(generate(model, [ImageTask(0, "a cat", 0, steps=3, guidance=1.0)], batch_size=1))
    assert seen[0] == pytest.approx(20.0)


def test_noised_between_draws_log_uniform_levels_inside_the_range():
    from diffgen.engine.denoiser import noised_between
    x0 = torch.zeros(4000, 1, 1, 1)
    noisy, sigma = noised_between(x0, 10.0, 80.0, torch.Generator().manual_seed(0))
    assert sigma.min() >= 10.0 and sigma.max() <= 80.0
    # log-uniform: the log's mean is the middle of the range, and the noise has that scale
    assert sigma.log().mean().item() == pytest.approx((math.log(10) + math.log(80)) / 2, abs=0.03)
    assert (noisy.flatten() / sigma).std().item() == pytest.approx(1.0, abs=0.05)


def test_a_high_noise_share_draws_the_last_rows_log_uniformly_and_leaves_the_rest():
    from diffgen.engine.denoiser import noised
    x0 = torch.zeros(4000, 1, 1, 1)
    plain_noisy, plain = noised(x0, 0.0, 1.2, torch.Generator().manual_seed(0))
    noisy, sigma = noised(x0, 0.0, 1.2, torch.Generator().manual_seed(0), 0.25, (2.0, 80.0))
    # the first three quarters are the log-normal draws themselves, the last quarter is log-uniform
    assert torch.equal(sigma[:3000], plain[:3000])
    high = sigma[3000:]
    assert high.min() >= 2.0 and high.max() <= 80.0
    assert high.log().mean().item() == pytest.approx((math.log(2) + math.log(80)) / 2, abs=0.06)
    assert high.log().std().item() == pytest.approx((math.log(80) - math.log(2)) / math.sqrt(12), abs=0.05)
    assert (noisy.flatten() / sigma).std().item() == pytest.approx(1.0, abs=0.05)
    # a share of none is the plain draw, bit for bit
    again_noisy, again = noised(x0, 0.0, 1.2, torch.Generator().manual_seed(0), 0.0, (2.0, 80.0))
    assert torch.equal(again, plain) and torch.equal(again_noisy, plain_noisy)
    # a fixed count per batch: round(share * B) rows
    _, small = noised(torch.zeros(32, 1, 1, 1), -1.2, 1.2, torch.Generator().manual_seed(1), 0.25, (50.0, 80.0))
    assert (small[24:] >= 50.0).all() and (small[:24] < 50.0).all()
