"""The upscaling stage: a diffusion model of a 2x image's detail given the base image.

A cascade's super-resolution step (Saharia et al. 2021, SR3; Ho et al. 2021, cascaded diffusion;
the second and third models of Imagen): a fully convolutional U-Net denoises the 2x image with the
base image, enlarged, as extra input channels. Two choices make it cheap enough to run after every
base image on a CPU:

* It models the **residual** r = x_2x - bicubic(x_base), the detail that enlargement misses (edges,
  flat fills). Its spread is a fraction of a whole image's, so the EDM preconditioning
  (Karras et al. 2022) uses its own sigma_data and a short sigma range, and a few sampler steps
  reach it from noise.
* The base image it sees is noised first (Imagen's conditioning augmentation): at a level drawn
  from [0, aug_sigma_max] in training and at a fixed small level when sampling, with that level
  given to the network, so the base model's speckles and soft edges read as something it learnt
  to see through.

The network has no attention and no text: every layer is a convolution, so it trains on crops and
runs on whole images of any size (padded to a multiple of its downsampling).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from diffgen.config import UpscaleConfig
from diffgen.engine.denoiser import edm_scalings, loss_weight
from diffgen.engine.unet import FourierEmbedding, ResBlock, group_norm, zero_init

SCALE = 2  # each upscaling stage doubles the side


def enlarge(images: torch.Tensor) -> torch.Tensor:
    """Bicubic 2x enlargement (B, C, H, W) -> (B, C, 2H, 2W): the image the residual is added to."""
    return F.interpolate(images, scale_factor=SCALE, mode="bicubic", align_corners=False)


def reduce(images: torch.Tensor) -> torch.Tensor:
    """The 2x image's base image: the mean of each 2 x 2 block, (B, C, 2H, 2W) -> (B, C, H, W)."""
    return F.avg_pool2d(images, SCALE)


class UpscaleNet(nn.Module):
    """F(x, c_noise, base, c_aug) -> (B, 3, 2H, 2W): a convolutional U-Net over the scaled noisy
    residual and the noised, enlarged base image (6 input channels); the noise level and the
    conditioning's augmentation level each have a Fourier embedding."""

    def __init__(self, cfg: UpscaleConfig):
        super().__init__()
        base = cfg.base_channels
        emb_dim = 4 * base
        self.noise_embed = FourierEmbedding(base)
        self.aug_embed = FourierEmbedding(base, seed=1)
        self.emb_mlp = nn.Sequential(nn.Linear(2 * base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(6, base, 3, padding=1)
        widths = [base * m for m in cfg.channel_mult]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, ch = [base], base
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, width, emb_dim, 0.0))
                ch = width
                skips.append(ch)
            self.down.append(blocks)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, 0.0), ResBlock(ch, ch, emb_dim, 0.0)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), widths[level], emb_dim, 0.0))
                ch = widths[level]
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = group_norm(ch)
        self.conv_out = zero_init(nn.Conv2d(ch, 3, 3, padding=1))
        self.multiple = 2 ** (len(widths) - 1)  # the side must divide by this

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, base: torch.Tensor, c_aug: torch.Tensor) -> torch.Tensor:
        """x (B,3,2H,2W) scaled noisy residual, c_noise (B,), base (B,3,2H,2W) enlarged base, c_aug (B,)."""
        emb = self.emb_mlp(torch.cat([self.noise_embed(c_noise), self.aug_embed(c_aug)], dim=1).to(x.dtype))
        h = self.conv_in(torch.cat([x, base.to(x.dtype)], dim=1))
        skips = [h]
        for level, blocks in enumerate(cast(Iterable[nn.ModuleList], self.down)):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for i, blocks in enumerate(cast(Iterable[nn.ModuleList], self.up)):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class Upscaler(nn.Module):
    """EDM-preconditioned residual denoiser D(r, sigma, base, aug) -> r0_hat, plus its sampling
    settings (the config's ``[upscale]`` section)."""

    def __init__(self, cfg: UpscaleConfig):
        super().__init__()
        self.cfg = cfg
        self.net = UpscaleNet(cfg)

    def forward(self, r: torch.Tensor, sigma: torch.Tensor, base_up: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        """r (B,3,2H,2W) noisy residual, sigma (B,), base_up (B,3,2H,2W) the noised base image
        enlarged, aug (B,) its noise level -> the residual's estimate (B,3,2H,2W)."""
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.cfg.sigma_data, r)
        dtype = next(self.net.parameters()).dtype
        c_aug = torch.log1p(aug.float() / self.cfg.sigma_data)  # 0 for a clean base image
        out = self.net((c_in * r.float()).to(dtype), c_noise, base_up.to(dtype), c_aug)
        return (c_skip * r.float() + c_out * out.float()).to(r.dtype)

    def loss(self, high: torch.Tensor, generator: torch.Generator, forward: nn.Module | None = None) -> torch.Tensor:
        """EDM loss per image (B,) of 2x images ``high`` (B,3,2H,2W) in [-1, 1]: their base images
        noised at a random augmentation level, the residual at a log-normal noise level. Every draw
        comes from the CPU ``generator``; ``forward`` runs the model (a DDP wrapper of it)."""
        cfg, b, device = self.cfg, high.shape[0], high.device
        base = reduce(high)
        residual = high - enlarge(base)
        aug = torch.rand(b, generator=generator) * cfg.aug_sigma_max
        cond_noise = torch.randn(base.shape, generator=generator)
        sigma = (cfg.p_mean + cfg.p_std * torch.randn(b, generator=generator)).exp()
        noise = torch.randn(residual.shape, generator=generator)
        aug, cond_noise, sigma, noise = (t.to(device) for t in (aug, cond_noise, sigma, noise))
        base_noised = base + aug[:, None, None, None] * cond_noise
        noisy = residual + sigma[:, None, None, None] * noise
        estimate = (forward or self)(noisy, sigma, enlarge(base_noised), aug)
        weight = loss_weight(sigma[:, None, None, None], cfg.sigma_data)
        return (weight * (estimate.float() - residual.float()) ** 2).mean(dim=(1, 2, 3))


def upscale(upscaler: Upscaler, base: torch.Tensor, generators: list[torch.Generator],
            steps: int | None = None, aug_sigma: float | None = None) -> torch.Tensor:
    """Base images (B, 3, H, W) in [-1, 1] -> 2x images (B, 3, 2H, 2W) in [-1, 1].

    Row b's conditioning noise and starting noise come from ``generators[b]`` (CPU), so an image's
    upscale depends on its own seed only. DPM-Solver++(2M) on the Karras schedule over the
    upscaler's sigma range; any side works (the input is padded, repeating its edge pixels, to the
    network's multiple and the result cropped)."""
    from diffgen.engine.samplers import sample_dpmpp_2m
    from diffgen.engine.schedule import karras_sigmas

    cfg = upscaler.cfg
    steps = cfg.steps if steps is None else steps
    aug_sigma = cfg.aug_sigma if aug_sigma is None else aug_sigma
    device = base.device
    b, _, h, w = base.shape
    half = upscaler.net.multiple  # the 2x side must divide by the multiple: pad the base by half of it
    pad_h, pad_w = (-h) % half, (-w) % half
    base = base.float()
    padded = F.pad(base, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else base
    cond_noise = torch.stack([torch.randn(padded.shape[1:], generator=g) for g in generators]).to(device)
    start = torch.stack([torch.randn(3, SCALE * padded.shape[2], SCALE * padded.shape[3], generator=g)
                         for g in generators]).to(device)
    # oneDNN's CPU convolutions run faster on channels-last (NHWC) images (about 10% here)
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    base_up = enlarge(padded + aug_sigma * cond_noise).contiguous(memory_format=layout)
    aug = torch.full((b,), float(aug_sigma), device=device)
    sigmas = karras_sigmas(steps, cfg.sigma_min, cfg.sigma_max)

    def denoise(r: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1).expand(b)
        return upscaler(r.contiguous(memory_format=layout), sigma, base_up, aug)

    residual = sample_dpmpp_2m(denoise, start * sigmas[0].item(), sigmas)
    high = enlarge(padded) + residual
    return high[:, :, :SCALE * h, :SCALE * w].clamp(-1, 1)


def upscale_generator(seed: int) -> torch.Generator:
    """The CPU generator of image ``seed``'s upscale: apart from its base image's generator, so the
    base image is the same with and without the upscale."""
    import hashlib

    digest = hashlib.sha256(f"upscale/{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
