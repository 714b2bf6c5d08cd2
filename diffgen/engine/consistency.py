"""A few-step student distilled from a guided diffusion model: the consistency function, its
sampler and one distillation step.

The student (``Student``) is a copy of the teacher's U-Net with the guidance scale w as one more
input (Meng et al. 2023, "On Distillation of Guided Diffusion Models"): sinusoidal features of w
through a small MLP whose output layer starts at zero, added to the noise-level embedding. Before
training its network is therefore the teacher's, for every w; after it, one forward per step gives
the guided result that classifier-free guidance needs two forwards for.

It is a consistency function (Song, Dhariwal, Chen, Sutskever 2023, "Consistency Models") in EDM's
form: it maps a point x at noise level sigma of a probability-flow ODE trajectory to the
trajectory's end at sigma_min,

    f(x, sigma, w) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), text, w)
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out  = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)              c_noise = ln(sigma) / 4

(Song et al. 2023, Appendix C; c_in and c_noise are EDM's, so the teacher's network reads the same
inputs). At sigma = sigma_min, c_skip is 1 and c_out 0: f(x, sigma_min) = x for any network, the
boundary condition by construction. Above sigma_min the coefficients are within a fraction of a
percent of EDM's (sigma_min = 0.002), so the teacher's weights start f near the teacher's D.

Distillation (``consistency_loss``; Latent Consistency Models, Luo et al. 2023, here on pixels):
x_{n+1} = x0 + sigma_{n+1} eps at a level of the teacher's Karras grid; one step of the teacher's
guided ODE (Heun or Euler on D_u + w (D_c - D_u), both branches in one batched forward) to the next
level down gives x_n; the loss is the distance between the student's f(x_{n+1}, sigma_{n+1}, w)
and the target network's (an average of the student, no gradient) f(x_n, sigma_n, w).

Sampling (``sample_consistency``; Song et al. 2023, Algorithm 1): x = s_0 eps, x0 = f(x, s_0); at
each further level x = x0 + s_i eps' (fresh noise) and x0 = f(x, s_i); the last x0 is the image.
The k levels (``consistency_sigmas``) cut the Karras ramp from sigma_max to sigma_min into k equal
parts: with the default 20-interval grid and k dividing 20, each is a level the student trained at.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diffgen.engine.denoiser import Conditioning, Denoiser, eps_from_x0, per_row
from diffgen.engine.schedule import karras_sigmas
from diffgen.engine.unet import zero_init

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ConditionalDenoiser = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
SOLVERS = ("heun", "euler")
GUIDANCE_FREQUENCIES = 6  # periods 32, 16, ..., 1 in w: smooth over the range guidance is used in
# Improved consistency training's pseudo-Huber constant per sqrt(dimension) (Song & Dhariwal 2023)
HUBER_PER_SQRT_DIM = 0.00054


def guidance_features(w: torch.Tensor) -> torch.Tensor:
    """Guidance scales (B,) -> (B, 2 * GUIDANCE_FREQUENCIES): cos and sin of w at periods 32 .. 1."""
    freqs = math.pi * 2.0 ** torch.arange(GUIDANCE_FREQUENCIES, device=w.device, dtype=torch.float32) / 16
    angles = w.float()[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class GuidanceEmbedding(nn.Module):
    """w's features -> an addition to the U-Net's noise-level embedding; zero until trained."""

    def __init__(self, emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * GUIDANCE_FREQUENCIES, emb_dim), nn.SiLU(),
                                 zero_init(nn.Linear(emb_dim, emb_dim)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(guidance_features(w))


def consistency_scalings(sigma: torch.Tensor, sigma_data: float, sigma_min: float, x: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) as (B, 1, 1, 1) and c_noise (B,) for per-row ``sigma`` (B,), in float32
    (float64 for float64 ``x``): the formulas of the module docstring."""
    exact = torch.promote_types(x.dtype, torch.float32)
    s = sigma.to(x.device, exact)[:, None, None, None]
    c_skip = sigma_data**2 / ((s - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (s - sigma_min) / (s**2 + sigma_data**2).sqrt()
    c_in = 1 / (s**2 + sigma_data**2).sqrt()
    return c_skip, c_out, c_in, sigma.to(x.device).log() / 4


class Student(nn.Module):
    """The consistency function f(x, sigma, cond, w) of the module docstring: a U-Net (``net``, the
    teacher's copy) and the guidance embedding, with the teacher's sigma_data and sigma range."""

    def __init__(self, net: nn.Module, emb_dim: int, sigma_data: float, sigma_min: float, sigma_max: float):
        super().__init__()
        self.net = net
        self.guidance = GuidanceEmbedding(emb_dim)
        self.sigma_data, self.sigma_min, self.sigma_max = sigma_data, sigma_min, sigma_max

    @classmethod
    def of_teacher(cls, teacher: Denoiser) -> Student:
        """A student whose network is a copy of ``teacher``'s (guidance embedding at zero)."""
        net = copy.deepcopy(teacher.net)
        emb_dim = net.emb_mlp[-1].out_features  # type: ignore[index,union-attr]
        return cls(net, emb_dim, teacher.sigma_data, teacher.sigma_min, teacher.sigma_max)

    def raw(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: Conditioning, w: torch.Tensor) -> torch.Tensor:
        """The network F alone (the teacher's F while the guidance embedding is zero)."""
        return self.net(x_in, c_noise, cond.tokens, cond.pooled, self.guidance(w))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Conditioning,
                w: torch.Tensor | float) -> torch.Tensor:
        """x (B,C,H,W) at ``sigma`` (B,) or scalar, cond of batch B, guidance scale(s) ``w`` ->
        the estimate of the trajectory's end (B,C,H,W). Coefficients and skip in float32, as in
        the teacher's denoiser."""
        sigma, w = per_row(sigma, x), per_row(w, x)
        exact = torch.promote_types(x.dtype, torch.float32)
        c_skip, c_out, c_in, c_noise = consistency_scalings(sigma, self.sigma_data, self.sigma_min, x)
        net_dtype = next(self.net.parameters()).dtype
        out = self.raw((c_in * x.to(exact)).to(net_dtype), c_noise, cond, w)
        return (c_skip * x.to(exact) + c_out * out.to(exact)).to(x.dtype)


def _rows(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-row values (B,) shaped to broadcast over ``x`` (B, ...), in x's (at least float32) type."""
    return values.to(x.device, torch.promote_types(x.dtype, torch.float32)).reshape(-1, *([1] * (x.dim() - 1)))


def student_denoiser(student: nn.Module, cond: Conditioning, guidance: float | torch.Tensor) -> Denoise:
    """Bind the text and the guidance scale: ``denoise(x, sigma) -> f(x, sigma)``, one forward."""
    return lambda x, sigma: student(x, sigma, cond.expand(x.shape[0]), per_row(guidance, x))


def guided_denoiser(model: ConditionalDenoiser, cond: Conditioning, uncond: Conditioning, w: torch.Tensor
                    ) -> Denoise:
    """Classifier-free guidance with a scale per row, ``w`` (B,): D_u + w (D_c - D_u), the two
    branches in one batched forward pass (as engine/guidance.py does for one scale)."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        paired = Conditioning.cat([cond.expand(batch), uncond.expand(batch)])
        x0_cond, x0_uncond = model(torch.cat([x, x]), torch.cat([sigma, sigma]), paired).chunk(2)
        return x0_uncond + _rows(w, x0_cond) * (x0_cond - x0_uncond)

    return denoise


def ode_step(denoise: Denoise, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
             solver: str = "heun") -> torch.Tensor:
    """One step of dx/dsigma = (x - D(x, sigma)) / sigma from per-row ``sigma`` to ``sigma_next``
    (both (B,), positive): Euler, or Heun's second order (EDM's Algorithm 1) with one more call."""
    s, n = _rows(sigma, x), _rows(sigma_next, x)
    slope = eps_from_x0(x, denoise(x, sigma), s)
    euler = x + (n - s) * slope
    if solver == "euler":
        return euler
    return x + (n - s) * (slope + eps_from_x0(euler, denoise(euler, sigma_next), n)) / 2


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(|a - b|^2 + c^2) - c per row (B,), |.| the L2 norm over the whole image."""
    return ((a.float() - b.float()).pow(2).flatten(1).sum(dim=1) + c * c).sqrt() - c


def huber_constant(x: torch.Tensor) -> float:
    """The pseudo-Huber c for images shaped like ``x`` (B, C, H, W): 0.00054 sqrt(C H W)."""
    return HUBER_PER_SQRT_DIM * math.sqrt(x[0].numel())


def consistency_loss(student: Denoise, target: Denoise, teacher: Denoise, x0: torch.Tensor, noise: torch.Tensor,
                     sigma_high: torch.Tensor, sigma_low: torch.Tensor, solver: str = "heun",
                     c: float | None = None) -> torch.Tensor:
    """Per image (B,): pseudo-Huber distance between the student's f(x_{n+1}, sigma_high) and the
    target's f(x_n, sigma_low), x_n one teacher ODE step down from x_{n+1} = x0 + sigma_high noise.
    ``student``, ``target`` and ``teacher`` are denoise(x, sigma) callables with the text and the
    guidance bound (``student_denoiser``, ``guided_denoiser``)."""
    x_high = x0 + _rows(sigma_high, x0) * noise
    with torch.no_grad():
        x_low = ode_step(teacher, x_high, sigma_high, sigma_low, solver)
        wanted = target(x_low, sigma_low)
    return pseudo_huber(student(x_high, sigma_high), wanted, huber_constant(x0) if c is None else c)


def distillation_grid(levels: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The teacher's ``levels + 1`` noise levels (float64, decreasing from sigma_max to sigma_min),
    Karras et al.'s rho-schedule: the pairs a distillation step draws are ``skip`` apart in it."""
    return karras_sigmas(levels + 1, sigma_min, sigma_max, rho)[:-1]


def consistency_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The levels of ``steps``-step consistency sampling, then 0 (``steps + 1`` values, float64, the
    schedule contract's shape): s_i at i / steps of the Karras ramp from sigma_max to sigma_min."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    ramp = torch.arange(steps, dtype=torch.float64) / steps
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def sample_consistency(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor,
                       noise_sampler: Callable[[float, float], torch.Tensor] | None = None,
                       callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Multistep consistency sampling (the sampler contract of engine/samplers.py): ``x`` at
    ``sigmas[0]``; at each level the estimate f(x, s_i), then x = f + s_{i+1} * fresh noise from
    ``noise_sampler`` (the image's own generator) while the next level is above 0. One call per step."""
    levels: list[float] = sigmas.tolist()
    draw = noise_sampler or (lambda sigma, sigma_next: torch.randn_like(x))
    estimate = x
    for i in range(len(levels) - 1):
        estimate = denoise(x, x.new_full((x.shape[0],), levels[i]))
        if callback is not None:
            callback({"i": i, "sigma": levels[i], "sigma_hat": levels[i], "x": x, "denoised": estimate})
        if levels[i + 1] > 0:
            x = estimate + levels[i + 1] * draw(levels[i], levels[i + 1])
    return estimate


@dataclass
class AttachedStudent:
    """A student loaded for sampling (diffgen/students.py attaches it as ``model.student``): the
    network, its schedule's rho, and what recipes name it by (the file's stem and SHA-256)."""

    student: Student
    rho: float
    name: str
    sha256: str

    def sigmas(self, steps: int) -> torch.Tensor:
        return consistency_sigmas(steps, self.student.sigma_min, self.student.sigma_max, self.rho)

    def denoiser(self, cond: Conditioning, guidance: float) -> Denoise:
        return student_denoiser(self.student, cond, guidance)

    def recipe(self) -> dict[str, str]:
        """What a fast image's recipe records of the student (a replay checks the file by it)."""
        return {"name": self.name, "sha256": self.sha256}
