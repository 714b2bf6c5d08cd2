"""Noise-level schedules: each returns a 1-D float64 tensor of ``num_steps + 1`` decreasing sigmas
ending in 0, so any sampler can take any schedule. Kept on the CPU: samplers read them as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _check(num_steps: int, sigma_min: float, sigma_max: float) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM schedule (Karras et al. 2022, eq. 5): sigma_i = (max^(1/rho) + i/(N-1) (min^(1/rho) - max^(1/rho)))^rho."""
    _check(num_steps, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Log-linear spacing: equal steps in log(sigma) (equal steps in DPM-Solver's lambda = -log sigma)."""
    _check(num_steps, sigma_min, sigma_max)
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps, dtype=torch.float64)
    return _append_zero(log_sigmas.exp())


def vp_sigmas(
    num_steps: int, sigma_min: float, sigma_max: float, beta_d: float = 19.9, beta_min: float = 0.1
) -> torch.Tensor:
    """Variance-preserving SDE schedule (Song et al. 2021) in sigma form, EDM Table 1:
    sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), with t uniform between t(sigma_max) and
    t(sigma_min)."""
    _check(num_steps, sigma_min, sigma_max)

    def t_of(sigma: float) -> float:  # inverse of sigma(t)
        return (math.sqrt(beta_min**2 + 2 * beta_d * math.log(sigma**2 + 1)) - beta_min) / beta_d

    t = torch.linspace(t_of(sigma_max), t_of(sigma_min), num_steps, dtype=torch.float64)
    return _append_zero(torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt())


Schedule = Callable[[int, float, float], torch.Tensor]

SCHEDULES: dict[str, Schedule] = {
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "vp": vp_sigmas,
}
