"""The checks a config must pass beyond its types: ranges, and how its sections fit together.

``Config`` runs ``validate`` on itself when it is made (diffgen/config.py), so a config that exists
is one that can be built; each failure is a ConfigError that names the key.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from diffgen.errors import ConfigError

if TYPE_CHECKING:
    from diffgen.config import Config

PRECISIONS = ("auto", "float32", "bfloat16")

# Sizes far past any real model's (Stable Diffusion's U-Net: 320 channels, 2 blocks a level, depth
# up to 10; CLIP: a context of 77 tokens, a vocabulary of 49408, 32 layers at most). A config is taken
# on trust from a TOML file or a checkpoint's metadata, and asked for more than the machine holds
# (a text context of 100,000 built a 40 GB attention mask): bounded, any config can be built on the
# meta device and compared with a checkpoint's tensors without allocating.
MAX_SIZES = {
    "image_size": 4096,
    "text.context_length": 1024, "text.vocab_size": 1_000_000, "text.width": 8192, "text.heads": 128,
    "text.layers": 64, "text.embed_dim": 8192, "text.vision_width": 8192, "text.vision_layers": 64,
    "text.vision_head_width": 8192, "text.vision_patch_size": 4096,
    "unet.base_channels": 8192, "unet.num_res_blocks": 8, "unet.head_dim": 8192, "unet.transformer_depth": 16,
    "unet.text_mixer_layers": 16,
    "layout.width": 8192, "layout.layers": 16, "layout.heads": 128, "layout.modes": 64,
    "upscale.base_channels": 8192, "upscale.num_res_blocks": 8, "upscale.steps": 1000, "upscale.crop": 8192,
    "train.seed": 2**63 - 1, "train.batch_size": 65536, "train.grad_accum": 65536, "train.clip_batch_size": 65536,
    "train.layout_batch_size": 65536, "train.upscale_batch_size": 65536, "train.grounding_pass_images": 65536,
    **{f"train.{key}": 10**9 for key in ("steps", "clip_steps", "warmup_steps", "layout_steps", "upscale_steps",
                                         "sample_every", "checkpoint_every")},
}
MAX_LEVELS, MAX_CHANNEL_MULT = 8, 64  # entries of a channel_mult (U-Net and upscaler), and each entry
# Float settings, (lowest, highest): a value finite in float64 but not in float32 (1e39), or one that
# float32 rounds to 0 (1e-50) and then divides by, made NaN; these bounds hold every real setting.
FLOAT_RANGES = {
    **{f"{part}.{key}": bounds for part in ("denoiser", "upscale") for key, bounds in (
        ("sigma_data", (1e-3, 100.0)), ("sigma_min", (1e-5, 1e4)), ("sigma_max", (1e-5, 1e4)),
        ("p_mean", (-10.0, 10.0)), ("p_std", (1e-3, 5.0)))},
    "denoiser.high_noise_min_sigma": (0.0, 1e4),
    **{f"train.{key}": (0.0, 1.0) for key in ("lr", "clip_lr", "layout_lr", "upscale_lr")},
    "train.weight_decay": (0.0, 10.0), "train.grad_clip": (0.0, 1e6), "train.text_lr_scale": (0.0, 100.0),
    "train.negative_weight": (0.0, 1e3), "train.negative_sharpness": (0.0, 1e6), "train.grounding_weight": (0.0, 1e3),
    "train.grounding_min_sigma": (0.0, 1e4), "train.layout_bias": (0.0, 100.0),  # sampling's layout strength bound
}


def _value(cfg: Config, key: str):
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def _validate_sizes(cfg: Config) -> None:
    """The upper bounds of MAX_SIZES and of the channel lists, checked first: the checks after them
    compute with these numbers (attention_resolutions against every level)."""
    for key, most in MAX_SIZES.items():
        _require(_value(cfg, key) <= most, f"config key '{key}' must be at most {most:,} (more than any real "
                                           f"model uses), got {_value(cfg, key):,}")
    for key in ("unet.channel_mult", "upscale.channel_mult", "unet.attention_resolutions"):
        values = _value(cfg, key)
        _require(len(values) <= MAX_LEVELS and all(v <= (MAX_CHANNEL_MULT if key.endswith("mult") else 4096)
                                                   for v in values),
                 f"config key '{key}' takes at most {MAX_LEVELS} entries, each at most "
                 f"{MAX_CHANNEL_MULT if key.endswith('mult') else 4096}")


def _validate_float_ranges(cfg: Config) -> None:
    """FLOAT_RANGES, checked after the sign and finiteness checks (whose words they keep)."""
    for key, (low, high) in FLOAT_RANGES.items():
        value = _value(cfg, key)
        _require(low <= value <= high, f"config key '{key}' must be from {low:g} to {high:g}, got {value:g}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Cross-field checks that a type check cannot express."""
    _validate_sizes(cfg)
    _require(cfg.image_size >= 4 and cfg.image_size & (cfg.image_size - 1) == 0,
             f"config key 'image_size' must be a power of two >= 4, got {cfg.image_size}")
    u = cfg.unet
    _require(len(u.channel_mult) >= 1 and all(m > 0 for m in u.channel_mult),
             "config key 'unet.channel_mult' must be a non-empty list of positive integers")
    _require(cfg.image_size % 2 ** (len(u.channel_mult) - 1) == 0,
             f"config key 'unet.channel_mult' has {len(u.channel_mult)} levels, too many for "
             f"image_size {cfg.image_size}")
    for key in ("base_channels", "num_res_blocks", "head_dim", "transformer_depth"):
        _require(getattr(u, key) > 0, f"config key 'unet.{key}' must be positive")
    _require(u.in_channels == 3, "config key 'unet.in_channels' must be 3 (RGB images)")
    _require(u.base_channels % 2 == 0, "config key 'unet.base_channels' must be even")
    _require(all((u.base_channels * m) % u.head_dim == 0 for m in u.channel_mult),
             "config key 'unet.head_dim' must divide the width of every U-Net level")
    _require(u.text_mixer_layers >= 0, "config key 'unet.text_mixer_layers' must be 0 or more")
    _require(0.0 <= u.dropout < 1.0, "config key 'unet.dropout' must be in [0, 1)")
    levels = [cfg.image_size // 2**i for i in range(len(u.channel_mult))]
    for res in u.attention_resolutions:
        _require(res in levels, f"config key 'unet.attention_resolutions' has {res}, "
                                f"but the U-Net levels are {levels} px")
    d = cfg.denoiser
    for key in ("sigma_data", "sigma_min", "sigma_max", "p_std"):
        value = getattr(d, key)
        _require(math.isfinite(value) and value > 0, f"config key 'denoiser.{key}' must be positive")
    _require(d.sigma_min < d.sigma_max, "config key 'denoiser.sigma_min' must be below sigma_max")
    _require(math.isfinite(d.p_mean), "config key 'denoiser.p_mean' must be finite")
    _require(0.0 <= d.high_noise_share <= 1.0, "config key 'denoiser.high_noise_share' must be in [0, 1]")
    _require(d.high_noise_share == 0.0 or 0.0 < d.high_noise_min_sigma < d.sigma_max,
             "config key 'denoiser.high_noise_min_sigma' must be positive and below sigma_max")
    t = cfg.text
    if not t.arch:
        for key in ("width", "heads", "layers", "embed_dim", "vision_width", "vision_layers",
                    "vision_head_width", "vision_patch_size"):
            _require(getattr(t, key) > 0, f"config key 'text.{key}' must be positive")
        _require(t.vocab_size >= 49408, "config key 'text.vocab_size' must be at least 49408 "
                                        "(the CLIP tokenizer's vocabulary)")
        _require(t.width % t.heads == 0, "config key 'text.width' must be divisible by text.heads")
        _require(cfg.image_size % t.vision_patch_size == 0,
                 "config key 'text.vision_patch_size' must divide image_size")
        _require(t.vision_width % t.vision_head_width == 0,
                 "config key 'text.vision_width' must be divisible by text.vision_head_width")
    _require(t.context_length >= 2, "config key 'text.context_length' must be at least 2")
    tr = cfg.train
    _require(0.0 <= tr.caption_dropout < 1.0, "config key 'train.caption_dropout' must be in [0, 1)")
    _require(math.isfinite(tr.negative_weight) and tr.negative_weight >= 0,
             "config key 'train.negative_weight' must be 0 or more")
    _require(math.isfinite(tr.grounding_weight) and tr.grounding_weight >= 0,
             "config key 'train.grounding_weight' must be 0 or more")
    _require(math.isfinite(tr.grounding_min_sigma) and tr.grounding_min_sigma >= 0,
             "config key 'train.grounding_min_sigma' must be 0 or more")
    _require(tr.grounding_pass_images >= 0, "config key 'train.grounding_pass_images' must be 0 or more")
    _require(math.isfinite(tr.layout_bias) and tr.layout_bias >= 0, "config key 'train.layout_bias' must be 0 or more")
    _require(not tr.grounding_pass_images or 0 < tr.grounding_min_sigma < cfg.denoiser.sigma_max,
             "config key 'train.grounding_pass_images' needs 0 < train.grounding_min_sigma < denoiser.sigma_max")
    _require(math.isfinite(tr.negative_sharpness) and tr.negative_sharpness > 0,
             "config key 'train.negative_sharpness' must be positive")
    _require(0.0 <= tr.ema_decay < 1.0, "config key 'train.ema_decay' must be in [0, 1)")
    _require(math.isfinite(tr.text_lr_scale) and tr.text_lr_scale >= 0,
             "config key 'train.text_lr_scale' must be 0 or more")
    for key in ("batch_size", "grad_accum", "clip_batch_size", "layout_batch_size", "upscale_batch_size",
                "sample_every", "checkpoint_every"):
        _require(getattr(tr, key) > 0, f"config key 'train.{key}' must be positive")
    # steps 0: the U-Net of an --init checkpoint is kept as it is (e.g. to train only the layout stage)
    for key in ("steps", "clip_steps", "warmup_steps", "layout_steps", "upscale_steps"):
        _require(getattr(tr, key) >= 0, f"config key 'train.{key}' must be >= 0")
    lay = cfg.layout
    _require(lay.width >= 0, "config key 'layout.width' must be 0 (no layout predictor) or more")
    if lay.width:
        for key in ("layers", "heads", "modes"):
            _require(getattr(lay, key) > 0, f"config key 'layout.{key}' must be positive")
        _require(lay.width % lay.heads == 0, "config key 'layout.width' must be divisible by layout.heads")
    _require(not tr.layout_steps or lay.width > 0,
             "config key 'train.layout_steps' needs a layout predictor: set layout.width")
    _validate_upscale(cfg)
    for key in ("lr", "clip_lr", "layout_lr", "upscale_lr", "grad_clip"):
        value = getattr(tr, key)
        _require(math.isfinite(value) and value > 0, f"config key 'train.{key}' must be positive")
    _require(math.isfinite(tr.weight_decay) and tr.weight_decay >= 0,
             "config key 'train.weight_decay' must be >= 0")
    _require(tr.precision in PRECISIONS,
             f"config key 'train.precision' must be one of {', '.join(PRECISIONS)}, got '{tr.precision}'")
    _validate_float_ranges(cfg)


def _validate_upscale(cfg: Config) -> None:
    up = cfg.upscale
    _require(up.base_channels >= 0 and up.base_channels % 2 == 0,
             "config key 'upscale.base_channels' must be 0 (no upscaler) or a positive even number")
    _require(not cfg.train.upscale_steps or up.base_channels > 0,
             "config key 'train.upscale_steps' needs an upscaler: set upscale.base_channels")
    if not up.base_channels:
        return
    _require(len(up.channel_mult) >= 1 and all(m > 0 for m in up.channel_mult),
             "config key 'upscale.channel_mult' must be a non-empty list of positive integers")
    _require(up.num_res_blocks > 0, "config key 'upscale.num_res_blocks' must be positive")
    for key in ("sigma_data", "sigma_min", "sigma_max", "p_std"):
        value = getattr(up, key)
        _require(math.isfinite(value) and value > 0, f"config key 'upscale.{key}' must be positive")
    _require(up.sigma_min < up.sigma_max, "config key 'upscale.sigma_min' must be below sigma_max")
    _require(math.isfinite(up.p_mean), "config key 'upscale.p_mean' must be finite")
    for key in ("aug_sigma_max", "aug_sigma"):
        value = getattr(up, key)
        _require(math.isfinite(value) and 0 <= value <= 1, f"config key 'upscale.{key}' must be in [0, 1]")
    _require(1 <= up.steps <= 1000, "config key 'upscale.steps' must be from 1 to 1000")
    multiple = 2 ** len(up.channel_mult)
    _require(up.crop >= multiple and up.crop % multiple == 0 and up.crop <= 2 * cfg.image_size,
             f"config key 'upscale.crop' must be a multiple of {multiple} (twice the upscaler's "
             f"downsampling) and at most twice image_size")
