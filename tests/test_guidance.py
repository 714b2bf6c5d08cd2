"""Classifier-free guidance: the end points, the mix, and one batched forward per step."""

from __future__ import annotations

import torch

from diffgen.engine.denoiser import Conditioning
from diffgen.engine.guidance import classifier_free_guidance
from diffgen.engine.samplers import sample_dpmpp_2m
from diffgen.engine.schedule import karras_sigmas


class CountingModel:
    """D(x, sigma, cond) = x * pooled[:, 0] + tokens mean: different for each conditioning."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, cond):
        self.calls.append(x.shape[0])
        scale = cond.pooled[:, :1, None, None]
        return x * scale + cond.tokens.mean(dim=(1, 2))[:, None, None, None]


def make_cond(value: float, batch: int = 1) -> Conditioning:
    return Conditioning(torch.full((batch, 5, 3), value), torch.full((batch, 2), value))


def test_scale_one_is_conditional_and_zero_is_unconditional():
    model = CountingModel()
    x, sigma = torch.randn(4, 3, 2, 2), torch.ones(4)
    cond, uncond = make_cond(2.0), make_cond(-1.0)
    assert torch.equal(classifier_free_guidance(model, cond, uncond, 1.0)(x, sigma),
                       model(x, sigma, cond.expand(4)))
    assert torch.equal(classifier_free_guidance(model, cond, uncond, 0.0)(x, sigma),
                       model(x, sigma, uncond.expand(4)))


def test_scale_mixes_linearly():
    model = CountingModel()
    x, sigma = torch.randn(4, 3, 2, 2), torch.ones(4)
    cond, uncond = make_cond(2.0, batch=4), make_cond(-1.0)
    guided = classifier_free_guidance(model, cond, uncond, 3.0)(x, sigma)
    c, u = model(x, sigma, cond), model(x, sigma, uncond.expand(4))
    assert torch.allclose(guided, u + 3.0 * (c - u))


def test_one_batched_forward_per_step():
    model = CountingModel()
    denoise = classifier_free_guidance(model, make_cond(0.5), make_cond(0.1), 4.0)
    sample_dpmpp_2m(denoise, torch.randn(3, 3, 2, 2), karras_sigmas(7, 0.002, 80.0))
    assert model.calls == [6] * 7
