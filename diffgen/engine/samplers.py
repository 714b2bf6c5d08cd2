"""Samplers: pure functions ``sample_<name>(denoise, x, sigmas, noise_sampler=None) -> x``.

``denoise(x, sigma_batch) -> x0_hat`` is the only view of the model; ``x`` starts as noise at
``sigmas[0]`` (i.e. ``sigma_max * n``); ``sigmas`` is a decreasing schedule ending in 0 (see
schedule.py). Stochastic samplers draw fresh noise only through ``noise_sampler(sigma, sigma_next)``,
so the caller decides where randomness comes from (per-image CPU generators, see
``seeded_noise_sampler``). ``callback(info)``, if given, is called once per step with a dict:
``i`` (step index), ``sigma``, ``sigma_hat`` (the level the model saw: above sigma after churn),
``x`` and ``denoised`` (the clean-image estimate, for denoising trajectories). The ancestral and
SDE samplers take ``eta`` (0 = their deterministic counterpart, 1 = the full stochastic step) and
``s_noise`` (scale of the fresh noise); EDM's stochastic sampler takes its churn (``s_churn``,
``s_tmin``, ``s_tmax``) and ``s_noise``. No sampler knows about text, guidance or devices.

The probability-flow ODE in the sigma parameterisation (EDM eq. 4, with s(t) = 1, sigma(t) = t) is
    dx/dsigma = (x - D(x, sigma)) / sigma = eps_hat.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffgen.engine.denoiser import eps_from_x0

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[float, float], torch.Tensor]
Callback = Callable[[dict], None]


def _report(callback: Callback | None, i: int, sigma: float, sigma_hat: float, x: torch.Tensor,
            denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_hat": sigma_hat, "x": x, "denoised": denoised})


def seeded_noise_sampler(generators: list[torch.Generator], like: torch.Tensor) -> NoiseSampler:
    """Noise drawn row by row from per-image CPU generators, then moved to ``like``'s device.

    Image k's noise depends only on its own generator, so results do not depend on batch size or
    device.
    """
    shape = like.shape[1:]

    def noise_sampler(sigma: float, sigma_next: float) -> torch.Tensor:
        rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
        return torch.stack(rows).to(like.device, like.dtype)

    return noise_sampler


def _noise_or_default(noise_sampler: NoiseSampler | None, x: torch.Tensor) -> NoiseSampler:
    return noise_sampler or (lambda sigma, sigma_next: torch.randn_like(x))


def _denoise_at(denoise: Denoise, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return denoise(x, x.new_full((x.shape[0],), sigma))


def _ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step from sigma to sigma_next.

    At eta = 1 this is the DDPM posterior: q(x_next | x, x0) has mean x0 + (sigma_next^2 / sigma^2)
    (x - x0) and variance sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2 (Ho et al. 2020, eq. 7, in
    sigma form), i.e. a deterministic step to sigma_down = sigma_next^2 / sigma plus fresh noise of
    size sigma_up. eta scales sigma_up (eta = 0: no noise, sigma_down = sigma_next, an Euler step).
    """
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def sample_euler(
    denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor,
    noise_sampler: NoiseSampler | None = None, callback: Callback | None = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE; in this parameterisation it is deterministic
    DDIM (Song et al. 2021; Karras et al. 2022, Sec. 4). One model call per step, order 1."""
    levels: list[float] = sigmas.tolist()
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        x0_hat = _denoise_at(denoise, x, sigma)
        _report(callback, i, sigma, sigma, x, x0_hat)
        x = x + (sigma_next - sigma) * eps_from_x0(x, x0_hat, sigma)
    return x


def sample_heun(
    denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor,
    noise_sampler: NoiseSampler | None = None, callback: Callback | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method, Karras et al. 2022 Algorithm 1 (Algorithm 2 with S_churn = 0).

    Two model calls per step except the last (to sigma = 0), which is an Euler step (line 8)."""
    levels: list[float] = sigmas.tolist()
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        x = _heun_step(denoise, x, sigma, sigma, sigma_next, i, callback)
    return x


def _heun_step(
    denoise: Denoise, x: torch.Tensor, sigma: float, sigma_hat: float, sigma_next: float, i: int,
    callback: Callback | None,
) -> torch.Tensor:
    """One Heun step from sigma_hat (x is at that level) to sigma_next; sigma is the schedule's level."""
    x0_hat = _denoise_at(denoise, x, sigma_hat)
    _report(callback, i, sigma, sigma_hat, x, x0_hat)
    d = eps_from_x0(x, x0_hat, sigma_hat)  # Alg. 1 line 4
    x_next = x + (sigma_next - sigma_hat) * d  # line 5
    if sigma_next != 0:  # lines 6-8: trapezoidal correction
        d_next = eps_from_x0(x_next, _denoise_at(denoise, x_next, sigma_next), sigma_next)
        x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
    return x_next


def sample_edm_stochastic(
    denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor,
    noise_sampler: NoiseSampler | None = None, callback: Callback | None = None,
    s_churn: float = 40.0, s_tmin: float = 0.05, s_tmax: float = 50.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Karras et al. 2022 Algorithm 2: add noise to raise sigma to sigma_hat = sigma (1 + gamma)
    ("churn"), then take a Heun step from sigma_hat to sigma_next."""
    noise_sampler = _noise_or_default(noise_sampler, x)
    levels: list[float] = sigmas.tolist()
    num_steps = len(levels) - 1
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        gamma = min(s_churn / num_steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)  # line 5
        if gamma > 0:  # line 6
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise_sampler(sigma, sigma_hat)
        x = _heun_step(denoise, x, sigma, sigma_hat, sigma_next, i, callback)
    return x


def sample_dpmpp_2m_sde(
    denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor,
    noise_sampler: NoiseSampler | None = None, callback: Callback | None = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2M) and its SDE variant, Lu et al. 2022 ("DPM-Solver++", Algorithm 2 and
    Sec. 5), data prediction, lambda = -log sigma, one model call per step.

    Per step with h = lambda_next - lambda, eta_h = eta h and r = h_prev / h:
      D = (1 + 1/(2r)) x0_hat - (1/(2r)) x0_prev   (the multistep 2nd-order estimate; x0_hat on the first step)
      x <- (sigma_next/sigma) e^-eta_h x + (1 - e^-(h + eta_h)) D + sigma_next sqrt(1 - e^-2 eta_h) s_noise z
    eta = 0 is the deterministic DPM-Solver++(2M) (no noise is drawn), eta = 1 the SDE solver. The
    last step (to sigma = 0) returns x0_hat."""
    noise_sampler = _noise_or_default(noise_sampler, x)
    levels: list[float] = sigmas.tolist()
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0  # set with x0_prev, read only once x0_prev is
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        x0_hat = _denoise_at(denoise, x, sigma)
        _report(callback, i, sigma, sigma, x, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        h = math.log(sigma / sigma_next)  # lambda_next - lambda
        eta_h = eta * h
        x0_mix = x0_hat
        if x0_prev is not None:
            r = h_prev / h
            x0_mix = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_prev
        x = (sigma_next / sigma) * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * x0_mix
        if eta_h > 0:
            x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise * noise_sampler(sigma, sigma_next)
        x0_prev, h_prev = x0_hat, h
    return x


def sample_dpmpp_2m(
    denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor,
    noise_sampler: NoiseSampler | None = None, callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): ``sample_dpmpp_2m_sde`` at eta = 0 (deterministic; first order on the
    first step, and the last step to sigma = 0 returns x0_hat)."""
    return sample_dpmpp_2m_sde(denoise, x, sigmas, noise_sampler, callback, eta=0.0)


def sample_euler_ancestral(
    denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor,
    noise_sampler: NoiseSampler | None = None, callback: Callback | None = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, DDPM) with the model's x0_hat: each step goes
    deterministically to sigma_down and adds fresh noise of size sigma_up (see _ancestral_split);
    eta = 0 is the Euler sampler."""
    noise_sampler = _noise_or_default(noise_sampler, x)
    levels: list[float] = sigmas.tolist()
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        x0_hat = _denoise_at(denoise, x, sigma)
        _report(callback, i, sigma, sigma, x, x0_hat)
        sigma_down, sigma_up = _ancestral_split(sigma, sigma_next, eta)
        x = x + (sigma_down - sigma) * eps_from_x0(x, x0_hat, sigma)
        if sigma_up > 0:
            x = x + sigma_up * s_noise * noise_sampler(sigma, sigma_next)
    return x


Sampler = Callable[..., torch.Tensor]

SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
    "euler-ancestral": sample_euler_ancestral,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
    "edm-stochastic": sample_edm_stochastic,
}

STOCHASTIC_SAMPLERS = frozenset({"euler-ancestral", "dpmpp-2m-sde", "edm-stochastic"})
