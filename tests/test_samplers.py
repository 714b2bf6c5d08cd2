"""Samplers against exact answers for Gaussian data.

For x0 ~ N(mu, s^2) per pixel the ideal denoiser is D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)
and the probability-flow ODE carries x_T at sigma_max to mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffgen.engine.samplers import SAMPLERS, STOCHASTIC_SAMPLERS, seeded_noise_sampler
from diffgen.engine.schedule import SCHEDULES, karras_sigmas

from .helpers import GAUSSIAN_MU as MU
from .helpers import GAUSSIAN_S as S
from .helpers import gaussian_denoiser

SIGMA_MAX = 80.0
DETERMINISTIC = sorted(set(SAMPLERS) - STOCHASTIC_SAMPLERS)


def start_noise(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return MU + SIGMA_MAX * torch.randn(batch, 1, generator=gen, dtype=torch.float64)


def exact_ode_end(x_t: torch.Tensor) -> torch.Tensor:
    return MU + (x_t - MU) * S / math.sqrt(S**2 + SIGMA_MAX**2)


def ode_error(name: str, num_steps: int, schedule: str = "karras") -> float:
    # sigma_min small enough that stopping there (then jumping to D) adds < 1e-7 error.
    x_t = start_noise(256)
    sigmas = SCHEDULES[schedule](num_steps, 1e-4, SIGMA_MAX)
    out = SAMPLERS[name](gaussian_denoiser, x_t.clone(), sigmas)
    return (out - exact_ode_end(x_t)).abs().max().item()


def test_contract_names():
    assert {"euler", "heun", "dpmpp-2m", "euler-ancestral", "dpmpp-2m-sde"} <= set(SAMPLERS)
    assert STOCHASTIC_SAMPLERS <= set(SAMPLERS)


@pytest.mark.parametrize("name, order", [("euler", 1.0), ("heun", 2.0), ("dpmpp-2m", 2.0)])
def test_deterministic_samplers_converge_at_their_order(name, order):
    errors = [ode_error(name, n) for n in (32, 64, 128, 256)]
    measured = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(m - order) < 0.25 for m in measured), (errors, measured)
    assert errors[-1] < (0.05 if order == 1 else 1e-3)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_every_sampler_works_with_every_schedule(name, schedule):
    coarse, fine = ode_error(name, 25, schedule), ode_error(name, 200, schedule)
    assert fine < coarse
    assert fine < 0.05


@pytest.mark.parametrize("name", sorted(STOCHASTIC_SAMPLERS))
def test_stochastic_samplers_reproduce_the_data_distribution(name):
    gen = torch.Generator().manual_seed(1)
    x = SIGMA_MAX * torch.randn(100_000, 1, generator=gen, dtype=torch.float64)
    noise_gen = torch.Generator().manual_seed(2)

    def noise_sampler(sigma, sigma_next):
        return torch.randn(x.shape, generator=noise_gen, dtype=torch.float64)

    out = SAMPLERS[name](gaussian_denoiser, x, karras_sigmas(400, 0.002, SIGMA_MAX), noise_sampler)
    # standard error of the mean is S / sqrt(1e5) = 0.0016; ancestral steps are biased at O(1/N)
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(S, rel=0.03)


@pytest.mark.parametrize("name", sorted(STOCHASTIC_SAMPLERS))
def test_stochastic_samplers_draw_noise_only_through_noise_sampler(name):
    calls = []

    def run() -> torch.Tensor:
        gens = [torch.Generator().manual_seed(100 + k) for k in range(3)]
        x = start_noise(3).reshape(3, 1, 1, 1).float()
        sampler = seeded_noise_sampler(gens, x)

        def counted(sigma, sigma_next):
            calls.append(sigma)
            return sampler(sigma, sigma_next)

        return SAMPLERS[name](gaussian_denoiser, x, karras_sigmas(10, 0.002, SIGMA_MAX), counted)

    global_state = torch.get_rng_state()
    first, second = run(), run()
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(first, second)
    assert calls, "a stochastic sampler must draw fresh noise"


def test_seeded_noise_is_independent_of_batch_composition():
    like = torch.zeros(4, 3, 2, 2)
    together = seeded_noise_sampler([torch.Generator().manual_seed(k) for k in range(4)], like)(1.0, 0.5)
    alone = seeded_noise_sampler([torch.Generator().manual_seed(2)], like[:1])(1.0, 0.5)
    assert torch.equal(together[2:3], alone)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_sees_every_step(name):
    seen = []
    sigmas = karras_sigmas(6, 0.002, SIGMA_MAX)
    x = start_noise(2).reshape(2, 1, 1, 1)
    SAMPLERS[name](gaussian_denoiser, x, sigmas, callback=lambda step: seen.append(step["i"]))
    assert sorted(set(seen)) == list(range(6))


def test_one_step_lands_on_the_denoiser_output():
    x = start_noise(4)
    for name in SAMPLERS:
        out = SAMPLERS[name](gaussian_denoiser, x.clone(), karras_sigmas(1, 0.002, SIGMA_MAX))
        expected = gaussian_denoiser(x, torch.full((4,), SIGMA_MAX, dtype=torch.float64))
        assert torch.allclose(out, expected), name


@pytest.mark.parametrize("stochastic, deterministic", [("euler-ancestral", "euler"), ("dpmpp-2m-sde", "dpmpp-2m")])
def test_eta_zero_is_the_deterministic_sampler_and_draws_no_noise(stochastic, deterministic):
    x, sigmas = start_noise(8), karras_sigmas(12, 0.002, SIGMA_MAX)

    def no_noise(sigma, sigma_next):
        raise AssertionError("eta = 0 must not draw noise")

    out = SAMPLERS[stochastic](gaussian_denoiser, x.clone(), sigmas, no_noise, eta=0.0)
    assert torch.equal(out, SAMPLERS[deterministic](gaussian_denoiser, x.clone(), sigmas))


@pytest.mark.parametrize("name", ["euler-ancestral", "dpmpp-2m-sde"])
def test_partial_eta_still_samples_the_data_distribution(name):
    gen, noise_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    x = SIGMA_MAX * torch.randn(100_000, 1, generator=gen, dtype=torch.float64)
    out = SAMPLERS[name](gaussian_denoiser, x, karras_sigmas(200, 0.002, SIGMA_MAX),
                         lambda s, t: torch.randn(x.shape, generator=noise_gen, dtype=torch.float64), eta=0.5)
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(S, rel=0.03)


def test_callback_reports_the_level_the_model_saw():
    steps = []
    x = start_noise(2).reshape(2, 1, 1, 1)
    SAMPLERS["edm-stochastic"](gaussian_denoiser, x, karras_sigmas(10, 0.002, SIGMA_MAX), callback=steps.append)
    assert {"i", "sigma", "sigma_hat", "x", "denoised"} <= steps[0].keys()
    churned = [s for s in steps if s["sigma_hat"] > s["sigma"]]
    assert churned and all(0.05 <= s["sigma"] <= 50 for s in churned)  # only inside [s_tmin, s_tmax]
