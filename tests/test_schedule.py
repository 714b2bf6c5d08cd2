"""Schedules: shape, end points and the defining formula of each."""

from __future__ import annotations

import math

import pytest
import torch

from diffgen.engine.schedule import SCHEDULES, exponential_sigmas, karras_sigmas, vp_sigmas


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("num_steps", [1, 2, 10, 50])
def test_shape_order_and_end_points(name, num_steps):
    sigmas = SCHEDULES[name](num_steps, 0.002, 80.0)
    assert sigmas.shape == (num_steps + 1,)
    assert sigmas[-1] == 0
    assert torch.all(sigmas[:-1] > 0)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-9)
    if num_steps > 1:
        assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-9)


def test_karras_matches_eq5():
    sigmas = karras_sigmas(5, 0.002, 80.0, rho=7.0)
    for i in range(5):
        expected = (80.0 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
        assert sigmas[i].item() == pytest.approx(expected, rel=1e-12)


def test_karras_rho_1_is_linear():
    sigmas = karras_sigmas(4, 1.0, 4.0, rho=1.0)
    assert sigmas.tolist() == pytest.approx([4.0, 3.0, 2.0, 1.0, 0.0])


def test_exponential_has_constant_ratio():
    sigmas = exponential_sigmas(8, 0.01, 10.0)[:-1]
    ratios = sigmas[1:] / sigmas[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-12)


def test_vp_follows_the_vp_sde():
    sigmas = vp_sigmas(6, 0.002, 80.0)[:-1]
    # sigma(t)^2 + 1 = exp(beta_d t^2 / 2 + beta_min t) with t linear in the step index
    t = [(math.sqrt(0.01 + 2 * 19.9 * math.log(s**2 + 1)) - 0.1) / 19.9 for s in sigmas.tolist()]
    steps = [b - a for a, b in zip(t, t[1:])]
    assert steps == pytest.approx([steps[0]] * len(steps), rel=1e-9)


def test_bad_arguments():
    with pytest.raises(ValueError):
        karras_sigmas(0, 0.002, 80.0)
    with pytest.raises(ValueError):
        exponential_sigmas(4, 1.0, 0.5)
