"""Cross-attention U-Net: F(x, c_noise, tokens, pooled) -> raw network output (B, C, H, W).

The layout follows the text-to-image U-Nets of Rombach et al. 2022 (latent diffusion) on pixels:
residual blocks modulated by the noise-level embedding (scale-shift, as in Dhariwal & Nichol 2021),
transformer blocks (self-attention, cross-attention to the text tokens, feed-forward) at the
configured resolutions, and skip connections from each down block to its mirror up block. The
pooled text embedding is added to the noise-level embedding. Preconditioning (c_in, c_out, c_skip)
is not here: it lives in denoiser.py.

Attention treats the image as a set of positions; only the convolutions' zero padding tells a
position where it is. With ``position_embedding`` each transformer block adds a learned projection
of fixed Fourier features of the pixel's place (x and y in [0, 1], so any image size works), so
that "A to the left of B" can send the first noun's tokens to the left half. The projection starts
at zero: a model without it loads unchanged and starts as the same function.

CLIP's text transformer is causal: a word's state depends only on the words before it, so in "a dog
to the left of a cat" the state of "dog" cannot know where it goes; only the later "cat" can know
it is on the right. With ``text_mixer_layers`` the tokens pass through that many bidirectional
transformer layers (``TextMixer``) before any cross-attention reads them. Their residual branches
start at zero, so a model without them loads unchanged too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from diffgen.config import UNetConfig


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups; fewer where the channel count is small or not divisible."""
    groups = max(g for g in range(1, 33) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so its residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (EDM's choice for its NCSN++ networks)."""

    freqs: torch.Tensor  # a buffer

    def __init__(self, num_channels: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        # drawn on the CPU (its generator's device) even while a model is sized on the meta device
        self.register_buffer("freqs", torch.randn(num_channels // 2, generator=gen, device="cpu") * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """c_noise (B,) -> features (B, num_channels)."""
        angles = c_noise.float()[:, None] * (2 * math.pi * self.freqs[None, :])
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """Two 3x3 convolutions; the embedding sets a per-channel scale and shift after the second norm."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention; keys from ``context`` if given.

    With ``keep_probs`` set (training's grounding loss, training/grounding.py) the weights are
    computed explicitly and the last call's (B, heads, N, M) are kept in ``probs``. With
    ``logit_bias`` set (sampling with a layout, sampling/layout.py) it is called with (B, N) and may
    return a (B, 1, N, M) bias added to the attention logits.
    """

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        self.keep_probs = False
        self.probs: torch.Tensor | None = None
        self.logit_bias: Callable[[int, int], torch.Tensor | None] | None = None
        self.num_heads = max(1, dim // head_dim)
        kv_dim = context_dim if context_dim is not None else dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, dim), context (B, M, context_dim) -> (B, N, dim)."""
        context = x if context is None else context
        b, n, dim = x.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, heads, dim // heads).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        bias = self.logit_bias(b, n) if self.logit_bias is not None else None
        if bias is not None:
            bias = bias.to(q.dtype)
        if self.keep_probs:
            logits = q @ k.transpose(-2, -1) * (dim // heads) ** -0.5
            self.probs = (logits if bias is None else logits + bias).softmax(dim=-1)
            out = self.probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.to_out(out.transpose(1, 2).reshape(b, n, dim))


POSITION_FREQUENCIES = 4  # pi * 2**k for k < 4: from one half-cycle across the image to 8


def position_features(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Sine and cosine of each pixel centre's x and y in [0, 1] at POSITION_FREQUENCIES
    frequencies: (height * width, 4 * POSITION_FREQUENCIES), rows in raster order."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    freqs = math.pi * 2.0 ** torch.arange(POSITION_FREQUENCIES, device=device, dtype=torch.float32)
    angles = torch.cat([x.reshape(-1, 1) * freqs, y.reshape(-1, 1) * freqs], dim=1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to text tokens and a GELU feed-forward; optionally
    a zero-initialised projection of the positions' Fourier features added to the input."""

    def __init__(self, channels: int, context_dim: int, head_dim: int, depth: int,
                 position_embedding: bool = False):
        super().__init__()
        self.norm = group_norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.pos_proj = (zero_init(nn.Linear(4 * POSITION_FREQUENCIES, channels, bias=False))
                         if position_embedding else None)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleDict({
                "norm_self": nn.LayerNorm(channels),
                "self_attn": Attention(channels, head_dim),
                "norm_cross": nn.LayerNorm(channels),
                "cross_attn": Attention(channels, head_dim, context_dim),
                "norm_ff": nn.LayerNorm(channels),
                "ff": nn.Sequential(
                    nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels)
                ),
            }))
        self.proj_out = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, H*W, C)
        if self.pos_proj is not None:
            h = h + self.pos_proj(position_features(hgt, wid, x.device).to(h.dtype))
        for layer in cast(Iterable[nn.ModuleDict], self.layers):
            h = h + layer["self_attn"](layer["norm_self"](h))
            h = h + layer["cross_attn"](layer["norm_cross"](h), context)
            h = h + layer["ff"](layer["norm_ff"](h))
        h = self.proj_out(h).transpose(1, 2).reshape(b, c, hgt, wid)
        return x + h


class TextMixer(nn.Module):
    """Pre-norm bidirectional self-attention and feed-forward layers over the text tokens, every
    residual branch's output layer zero-initialised: (B, L, D) -> (B, L, D), the identity at init."""

    def __init__(self, dim: int, head_dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            attn = Attention(dim, head_dim)
            zero_init(attn.to_out)
            ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), zero_init(nn.Linear(4 * dim, dim)))
            self.layers.append(nn.ModuleDict({
                "norm_attn": nn.LayerNorm(dim), "attn": attn, "norm_ff": nn.LayerNorm(dim), "ff": ff,
            }))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for layer in cast(Iterable[nn.ModuleDict], self.layers):
            tokens = tokens + layer["attn"](layer["norm_attn"](tokens))
            tokens = tokens + layer["ff"](layer["norm_ff"](tokens))
        return tokens


class UNetLayer(nn.Module):
    """One residual block, optionally followed by a transformer block."""

    def __init__(self, res: ResBlock, attn: TransformerBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x, context) if self.attn is not None else x


class UNet(nn.Module):
    """The cross-attention U-Net; see the module docstring for the layout."""

    def __init__(self, cfg: UNetConfig, image_size: int, context_dim: int, pooled_dim: int):
        super().__init__()
        base = cfg.base_channels
        emb_dim = 4 * base
        self.noise_embed = FourierEmbedding(base)
        self.emb_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.pooled_proj = nn.Linear(pooled_dim, emb_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        self.text_mixer = (TextMixer(context_dim, cfg.head_dim, cfg.text_mixer_layers)
                           if cfg.text_mixer_layers else None)

        def layer(cin: int, cout: int, resolution: int) -> UNetLayer:
            attn = None
            if resolution in cfg.attention_resolutions:
                attn = TransformerBlock(cout, context_dim, cfg.head_dim, cfg.transformer_depth,
                                        cfg.position_embedding)
            return UNetLayer(ResBlock(cin, cout, emb_dim, cfg.dropout), attn)

        num_levels = len(cfg.channel_mult)
        widths = [base * m for m in cfg.channel_mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_channels = [base]
        ch = base
        for level, width in enumerate(widths):
            resolution = image_size // 2**level
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(layer(ch, width, resolution))
                ch = width
                skip_channels.append(ch)
            self.down.append(blocks)
            if level < num_levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_channels.append(ch)

        # The middle is residual -> transformer -> residual, at the lowest resolution.
        self.mid = nn.ModuleList([
            UNetLayer(ResBlock(ch, ch, emb_dim, cfg.dropout),
                      TransformerBlock(ch, context_dim, cfg.head_dim, cfg.transformer_depth,
                                       cfg.position_embedding)),
            UNetLayer(ResBlock(ch, ch, emb_dim, cfg.dropout), None),
        ])

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(num_levels)):
            resolution = image_size // 2**level
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(layer(ch + skip_channels.pop(), widths[level], resolution))
                ch = widths[level]
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))

        self.norm_out = group_norm(ch)
        self.conv_out = zero_init(nn.Conv2d(ch, cfg.in_channels, 3, padding=1))

    def cross_attentions(self) -> list[Attention]:
        """Every transformer block's cross-attention to the text, in forward order."""
        return [cast(Attention, m["cross_attn"])
                for m in self.modules() if isinstance(m, nn.ModuleDict) and "cross_attn" in m]

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor,
        extra_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B,C,H,W), c_noise (B,), tokens (B,L,D), pooled (B,E) -> (B,C,H,W). ``extra_emb``
        (B, 4 * base_channels), where given, is added to the noise-level embedding (a distilled
        student's guidance scale: engine/consistency.py)."""
        emb = self.emb_mlp(self.noise_embed(c_noise).to(x.dtype)) + self.pooled_proj(pooled)
        if extra_emb is not None:
            emb = emb + extra_emb
        if self.text_mixer is not None:
            tokens = self.text_mixer(tokens)
        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(cast(Iterable[nn.ModuleList], self.down)):
            for block in blocks:
                h = block(h, emb, tokens)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb, tokens)
        for i, blocks in enumerate(cast(Iterable[nn.ModuleList], self.up)):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, tokens)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
