"""Frozen configuration dataclasses, loaded strictly from TOML.

A config file has one table per dataclass: ``[model]`` (top level), ``[text]``, ``[unet]``,
``[denoiser]``, ``[layout]``, ``[upscale]`` and ``[train]``. An unknown key, a wrong type or an
impossible value is an error that names the key; a missing key takes the default written here.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffgen.config_checks import validate
from diffgen.errors import ConfigError


@dataclass(frozen=True)
class TextConfig:
    """CLIP text encoder (and its image tower, kept for training and evaluation).

    With ``arch`` empty the model is built from the widths below with random weights. With ``arch``
    set (an open_clip architecture such as ``ViT-B-32``) the widths are ignored and ``pretrained``
    names an open_clip pretrained tag or a local ``.safetensors`` weights file.
    """

    arch: str = ""
    pretrained: str = ""
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 128
    heads: int = 4
    layers: int = 4
    embed_dim: int = 128
    vision_width: int = 128
    vision_layers: int = 4
    vision_head_width: int = 32
    vision_patch_size: int = 4


@dataclass(frozen=True)
class UNetConfig:
    """Cross-attention U-Net widths and depths.

    ``channel_mult[i]`` scales ``base_channels`` at level i (level 0 is full resolution; each next
    level halves it). Transformer blocks (self-attention, cross-attention, feed-forward) are placed
    at the levels whose resolution in pixels is listed in ``attention_resolutions``.
    """

    in_channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    head_dim: int = 32
    transformer_depth: int = 1
    dropout: float = 0.0
    # Fourier features of each position added inside every transformer block (zero-initialised):
    # attention alone cannot tell the left of the image from the right
    position_embedding: bool = False
    # bidirectional transformer layers over the text tokens before cross-attention (zero-initialised):
    # CLIP's causal mask keeps a word from seeing the words after it ("a dog to the left of ...")
    text_mixer_layers: int = 0


@dataclass(frozen=True)
class DenoiserConfig:
    """EDM preconditioning and training noise distribution (Karras et al. 2022, Table 1)."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    # This share of each batch's training draws (its last rows) takes noise levels log-uniform on
    # [high_noise_min_sigma, sigma_max] instead of log-normal: where the sampler lays out a scene
    # (sigma 10 to 80) the log-normal draws almost never go (0.2% of them at p_mean -1.2, 2.7% at 0),
    # and there only the words can say which object goes where. 0: log-normal draws only.
    high_noise_share: float = 0.0
    high_noise_min_sigma: float = 2.0


@dataclass(frozen=True)
class LayoutConfig:
    """The layout predictor (engine/layout_net.py): from the text encoder's token states, which words
    name objects and where each goes. ``width`` 0: the model has none (sampling then lays out only
    what --place gives)."""

    width: int = 0
    layers: int = 2
    heads: int = 4
    # alternative layouts of a whole scene: "a dog next to a cat" is drawn in either order
    modes: int = 2
    # each layout a distribution: every object's centre and size spread about its box (its own
    # spread and one the scene shares), so that each image's seed draws its own layout; off: one
    # box per object and layout, as the shipped model's predictor (engine/layout_net.py)
    spread: bool = False


@dataclass(frozen=True)
class UpscaleConfig:
    """The upscaling stage (engine/upscaler.py): a convolutional diffusion model of the 2x image's
    detail, conditioned on the base image (SR3 / Imagen's cascade). ``base_channels`` 0: the model
    has none (samples stay at image_size).

    It denoises the residual between the 2x image and the base image's bicubic enlargement, whose
    spread is far below a whole image's, so its sigma range is its own. The base image it sees is
    noised at a level drawn from [0, ``aug_sigma_max``] in training (Imagen's conditioning
    augmentation, so the base model's own artefacts look like something it has seen) and at
    ``aug_sigma`` when sampling; ``steps`` is its sampler's step count (dpmpp-2m, Karras schedule).
    """

    base_channels: int = 0
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    sigma_data: float = 0.2
    sigma_min: float = 0.002
    sigma_max: float = 4.0
    p_mean: float = -1.6
    p_std: float = 1.2
    aug_sigma_max: float = 0.15
    aug_sigma: float = 0.03
    steps: int = 4
    # training crops, in pixels of the 2x image: the network is convolutional, so it learns from crops
    # (a quarter of a 128 px image costs a quarter) and runs on whole images
    crop: int = 64


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for both training stages."""

    seed: int = 0
    batch_size: int = 32
    grad_accum: int = 1
    steps: int = 20000
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    # Ramp the EMA decay up from 0 over the first steps (right for a fresh network). Set false when
    # starting from a trained checkpoint (--init): its weights already are an average worth keeping.
    ema_warmup: bool = True
    caption_dropout: float = 0.1
    # Train CLIP's text tower together with the U-Net in the diffusion stage, at this fraction of
    # the U-Net's learning rate (0: frozen). The contrastive stage leaves a text tower that hardly
    # tells "A to the left of B" from "B to the left of A"; the denoising loss asks it to.
    text_lr_scale: float = 0.0
    # Caption contrast: for images whose data names negative captions (metadata.jsonl
    # "negative_text", e.g. "B to the left of A" for a picture of A to the left of B), the denoising
    # loss under the true caption is pushed below the loss under a negative one, at the same noisy
    # image, by this weight (0: off). The plain denoising loss hardly rewards knowing which object
    # goes where; this term asks for exactly that. negative_sharpness sets the gap (in loss units,
    # about 1/sharpness) beyond which an image stops contributing.
    negative_weight: float = 0.0
    negative_sharpness: float = 100.0
    # Grounding loss (training/grounding.py, after TokenCompose): for images whose data says where
    # each named object is (metadata.jsonl "regions"), the cross-attention of the object's name is
    # pulled into its box, by this weight (0: off). Only images noised to at least
    # grounding_min_sigma count: at low noise the picture itself shows where each object is, and
    # attention can find it by content; at high noise only the words (and the pixel's place) can
    # say it, which is the binding a two-object prompt needs when the sampler lays out the scene.
    grounding_weight: float = 0.0
    grounding_min_sigma: float = 0.0
    # The training noise rarely reaches the levels where the sampler lays out a scene (sigma 10 to
    # 80 is under 3% of draws at p_mean 0), so the grounding loss can also read a pass of its own:
    # the batch's first grounding_pass_images images again, in the same forward pass, at noise
    # levels drawn log-uniformly from [grounding_min_sigma, sigma_max]. Their denoising loss is
    # not used. 0: no such pass.
    grounding_pass_images: int = 0
    # Layout-conditioned training: captions that name two or more objects with regions in the data
    # are denoised with sampling's layout bias (sampling/layout.py) at this strength in every
    # cross-attention, so the U-Net learns to draw each object inside the box the bias gives it,
    # as the sampler asks of it for every prompt the layout predictor lays out (0: off).
    layout_bias: float = 0.0
    clip_steps: int = 500
    clip_batch_size: int = 128
    clip_lr: float = 5e-4
    # Stage 3, after the U-Net: the layout predictor learns the object regions of the data's captions
    # (metadata.jsonl "regions") from the frozen text encoder (0: no such stage; needs layout.width).
    layout_steps: int = 0
    layout_batch_size: int = 64
    layout_lr: float = 1e-3
    # Stage 4, last: the upscaler ([upscale]) learns the folder's images at twice image_size from
    # their halves (0: no such stage; needs upscale.base_channels and images of at least 2x the size).
    upscale_steps: int = 0
    upscale_batch_size: int = 32
    upscale_lr: float = 5e-4
    sample_every: int = 500
    checkpoint_every: int = 200
    # U-Net arithmetic of the diffusion stage: "auto" is bf16 autocast on CUDA and on CPUs with
    # native bf16 dot products (AVX512-BF16 / AMX), float32 elsewhere; or "float32" / "bfloat16".
    precision: str = "auto"


@dataclass(frozen=True)
class Config:
    """The whole model and training recipe; travels inside every checkpoint."""

    image_size: int = 32
    text: TextConfig = field(default_factory=TextConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    upscale: UpscaleConfig = field(default_factory=UpscaleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        validate(self)


_SECTIONS = {"text": TextConfig, "unet": UNetConfig, "denoiser": DenoiserConfig, "layout": LayoutConfig,
             "upscale": UpscaleConfig, "train": TrainConfig}


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` coerced to ``annotation`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__}")
        return tuple(_check_value(f"{key}[{i}]", v, item_type) for i, v in enumerate(value))
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a new field type needs a rule here
        raise TypeError(f"no rule to check config field type {annotation!r}")
    if not ok:
        raise ConfigError(
            f"config key '{key}' must be {annotation.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown config key '{path}' (known: {', '.join(sorted(known))})")
        annotation = hints[key]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a table")
            kwargs[key] = _build(annotation, value, f"{path}.")
        else:
            kwargs[key] = _check_value(path, value, annotation)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested dicts (as parsed from TOML or JSON), strictly."""
    return _build(Config, data, "")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dicts (tuples as lists), suitable for JSON and TOML."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# A config file is a few kilobytes; one past this is not one (a file of gigabytes was read whole).
MAX_CONFIG_BYTES = 1024 * 1024


def load_config(path: str | Path) -> Config:
    """Read a TOML config file strictly; errors name the file and the key."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024:,} kB: not a config")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib reads nested arrays recursively
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_toml(cfg: Config) -> str:
    """Render a Config as TOML that ``load_config`` reads back to an equal Config."""
    data = config_to_dict(cfg)
    lines = [f"image_size = {data.pop('image_size')}", ""]
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)

