"""EDM preconditioning D(x, sigma, cond) -> x0_hat, and the training loss that goes with it.

Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative Models"
(NeurIPS 2022), Table 1 and Section 5:
    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)     c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in = 1 / sqrt(sigma^2 + sigma_data^2)              c_noise = ln(sigma) / 4
Loss: lambda(sigma) |D(x0 + sigma n) - x0|^2 with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
and ln(sigma) ~ N(P_mean, P_std^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def eps_from_x0(x: torch.Tensor, x0_hat: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The noise a denoiser implies: x = x0 + sigma * eps, so eps_hat = (x - x0_hat) / sigma.

    This is the one place the noise-prediction (DDPM) view and the denoiser (EDM) view meet; it is
    also dx/dsigma of the probability-flow ODE, which the samplers integrate.
    """
    return (x - x0_hat) / sigma


def x0_from_eps(x: torch.Tensor, eps_hat: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Inverse of ``eps_from_x0``: x0_hat = x - sigma * eps_hat."""
    return x - sigma * eps_hat


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning for a batch: per-token states (B, L, D) and pooled embedding (B, E)."""

    tokens: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Concatenate along the batch dimension."""
        return Conditioning(torch.cat([p.tokens for p in parts]), torch.cat([p.pooled for p in parts]))

    def expand(self, batch: int) -> Conditioning:
        """Repeat a single conditioning row ``batch`` times (a view, no copy)."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand a conditioning of batch {len(self)} to {batch}")
        return Conditioning(self.tokens.expand(batch, -1, -1), self.pooled.expand(batch, -1))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        return Conditioning(self.tokens.to(device, dtype), self.pooled.to(device, dtype))


def edm_scalings(sigma: torch.Tensor, sigma_data: float, x: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's (c_skip, c_out, c_in) as (B, 1, 1, 1) tensors and c_noise (B,) for per-sample ``sigma``
    (B,), in float32 (float64 for float64 ``x``) on x's device (Karras et al. 2022, Table 1)."""
    exact = torch.promote_types(x.dtype, torch.float32)
    s = sigma.to(x.device, exact)[:, None, None, None]
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s * sigma_data / (s**2 + sigma_data**2).sqrt()
    c_in = 1 / (s**2 + sigma_data**2).sqrt()
    return c_skip, c_out, c_in, sigma.to(x.device).log() / 4


def per_row(value: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) value (a sigma, a guidance scale) as a float32 (B,) tensor on x's device;
    a scalar is broadcast over the batch."""
    value = torch.as_tensor(value, dtype=torch.float32, device=x.device).reshape(-1)
    return value.expand(x.shape[0]) if value.numel() == 1 else value


class Denoiser(nn.Module):
    """Wraps a raw network F(x, c_noise, tokens, pooled) with EDM preconditioning.

    It carries the noise-level range it was trained for (``sigma_min``, ``sigma_max``), so a
    sampling schedule is built from the model itself. The preconditioning coefficients and the
    skip connection are computed in float32 whatever the autocast dtype: c_skip x carries the whole
    image at low noise, where bf16's 8-bit mantissa would cost visible levels."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    @classmethod
    def from_config(cls, net: nn.Module, cfg) -> Denoiser:
        """The wrapper with a config's ``denoiser`` section (sigma_data and the sigma range)."""
        return cls(net, cfg.denoiser.sigma_data, cfg.denoiser.sigma_min, cfg.denoiser.sigma_max)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Conditioning) -> torch.Tensor:
        """x (B,C,H,W) noisy image, sigma (B,) or scalar, cond of batch B -> x0_hat (B,C,H,W)."""
        sigma = per_row(sigma, x)
        exact = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 input
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data, x)
        net_dtype = next(self.net.parameters()).dtype
        out = self.net((c_in * x.to(exact)).to(net_dtype), c_noise, cond.tokens, cond.pooled)
        return (c_skip * x.to(exact) + c_out * out.to(exact)).to(x.dtype)


def sample_training_sigmas(
    batch: int, p_mean: float, p_std: float, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Log-normal noise levels for training: ln(sigma) ~ N(p_mean, p_std^2), shape (B,)."""
    gen_device = generator.device if generator is not None else device
    normal = torch.randn(batch, generator=generator, device=gen_device).to(device)
    return (p_mean + p_std * normal).exp()


def noised(
    x0: torch.Tensor, p_mean: float, p_std: float, generator: torch.Generator | None = None,
    high_share: float = 0.0, high_range: tuple[float, float] = (2.0, 80.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training draw: (x0 + sigma n, sigma) with ln(sigma) ~ N(p_mean, p_std^2), sigma shape (B,).

    With ``high_share``, the last round(high_share * B) rows draw ln(sigma) uniformly on
    [ln low, ln high] of ``high_range`` instead. A fixed count rather than a coin per row, so that
    every batch holds the same share; with none, the draws are exactly the log-normal ones."""
    sigma = sample_training_sigmas(x0.shape[0], p_mean, p_std, generator, x0.device)
    gen_device = generator.device if generator is not None else x0.device
    high = round(high_share * x0.shape[0])
    if high:
        low_end, high_end = math.log(high_range[0]), math.log(high_range[1])
        u = torch.rand(high, generator=generator, device=gen_device).to(x0.device)
        sigma[x0.shape[0] - high:] = (low_end + u * (high_end - low_end)).exp()
    noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(x0.device, x0.dtype)
    return x0 + sigma[:, None, None, None] * noise, sigma


def noised_between(
    x0: torch.Tensor, low: float, high: float, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 + sigma n, sigma) with ln(sigma) uniform on [ln low, ln high], sigma shape (B,)."""
    gen_device = generator.device if generator is not None else x0.device
    u = torch.rand(x0.shape[0], generator=generator, device=gen_device).to(x0.device)
    sigma = (math.log(low) + u * (math.log(high) - math.log(low))).exp()
    noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(x0.device, x0.dtype)
    return x0 + sigma[:, None, None, None].to(x0.dtype) * noise, sigma


def denoising_loss(denoiser: Denoiser, noisy: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor,
                   cond: Conditioning) -> torch.Tensor:
    """lambda(sigma) * mean |D(noisy, sigma) - x0|^2 per sample, shape (B,)."""
    x0_hat = denoiser(noisy, sigma, cond)
    s = sigma[:, None, None, None]
    return (loss_weight(s, denoiser.sigma_data) * (x0_hat.float() - x0.float()) ** 2).mean(dim=(1, 2, 3))


def edm_loss(
    denoiser: Denoiser, x0: torch.Tensor, cond: Conditioning, p_mean: float = -1.2,
    p_std: float = 1.2, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """EDM training loss per sample, shape (B,): lambda(sigma) * mean |D(x0 + sigma n) - x0|^2.

    The weight is 1 / c_out^2, so this is the plain mean-squared error of the raw network F against
    its effective target (EDM eq. 8), whose variance is 1 at every sigma.
    """
    noisy, sigma = noised(x0, p_mean, p_std, generator)
    return denoising_loss(denoiser, noisy, sigma, x0, cond)


def contrast_loss(true_loss: torch.Tensor, negative_loss: torch.Tensor, sharpness: float) -> torch.Tensor:
    """softplus(-k (L_neg - L_true)) / k per sample: the logistic loss of telling the true caption
    from a negative one by which denoises the image better (a diffusion model read as a classifier,
    Li et al. 2023). Its gradient is sigmoid(-k gap) * (grad L_true - grad L_neg): half of that
    while the model cannot tell them apart, fading once the gap is well beyond 1/k."""
    return torch.nn.functional.softplus(-sharpness * (negative_loss - true_loss)) / sharpness


def loss_weight(sigma: torch.Tensor | float, sigma_data: float) -> torch.Tensor | float:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
