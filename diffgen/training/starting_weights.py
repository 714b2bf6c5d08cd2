"""Where a run's weights start, and the rules for it.

``--init CHECKPOINT`` starts every weight from a trained model: its config must equal the run's
(the [train] section and the training noise distribution aside) or grow it (``grows_from``: what
the run adds starts as the identity, so the run starts as the checkpoint's function).
``--text-encoder`` takes only the text tower: a diffgen checkpoint's, or open_clip's ARCH:PRETRAINED.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from diffgen.checkpoint import load_model
from diffgen.config import Config, config_to_dict
from diffgen.engine.model import DiffusionModel
from diffgen.errors import InputError


def resolve_text_encoder(cfg: Config, spec: str | None) -> tuple[Config, DiffusionModel | None]:
    """Apply --text-encoder: a diffgen checkpoint (its text config and weights) or ARCH:PRETRAINED."""
    if not spec:
        return cfg, None
    if spec.endswith(".safetensors") and ":" not in spec:
        source = load_model(spec)  # a missing or bad file is a CheckpointError naming it
        return dataclasses.replace(cfg, text=source.config.text), source
    arch, _, pretrained = spec.partition(":")
    if not pretrained:
        raise InputError(f"--text-encoder {spec}: give a diffgen checkpoint (.safetensors) or "
                         "ARCH:PRETRAINED (an open_clip tag or a local weights file)")
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, arch=arch, pretrained=pretrained)), None


def attention_levels(cfg: Config) -> list[int]:
    """The U-Net levels (0 = full resolution) that hold a transformer block."""
    return [level for level in range(len(cfg.unet.channel_mult))
            if cfg.image_size // 2**level in cfg.unet.attention_resolutions]


# [denoiser] keys that only say how training draws its noise levels, not what the model computes.
TRAINING_ONLY_DENOISER_KEYS = ("p_mean", "p_std", "high_noise_share", "high_noise_min_sigma")


def model_differences(cfg: Config, source: Config) -> list[str]:
    """The config sections (and top-level keys) other than [train] in which the two models differ;
    the training noise distribution (denoiser.p_mean, p_std, high_noise_*) may differ."""
    mine, theirs = config_to_dict(cfg), config_to_dict(source)
    for d in (mine, theirs):
        for key in TRAINING_ONLY_DENOISER_KEYS:
            d.get("denoiser", {}).pop(key, None)
    return sorted(k for k in mine if k != "train" and mine[k] != theirs.get(k))


def grows_from(cfg: Config, source: Config) -> bool:
    """True when every weight of ``source``'s model has its place in ``cfg``'s and whatever ``cfg``
    adds starts as the identity, so that a run from ``source`` starts as ``source``'s function.
    ``cfg`` may differ in the image size (the U-Net is convolutional and its transformer blocks take
    any number of positions: the attention levels must match, e.g. [16, 8] at 32 px is [32, 16] at
    64 px), add transformer blocks at more levels (their output projection starts at zero), turn
    on ``unet.position_embedding`` and add ``unet.text_mixer_layers`` (their output projections start
    at zero), add a layout predictor or an upscaler (each trained by its own stage) or leave it out,
    or replace the layout predictor by one of another shape that the run's layout stage trains;
    all else must be the same."""
    if any(k not in ("image_size", "unet", "layout", "upscale") for k in model_differences(cfg, source)):
        return False
    # a layout predictor of another shape replaces the checkpoint's only where the run's layout
    # stage trains the new one (load_init_weights leaves the old one out)
    if cfg.layout != source.layout and source.layout.width and cfg.layout.width and not cfg.train.layout_steps:
        return False
    if cfg.upscale != source.upscale and source.upscale.base_channels and cfg.upscale.base_channels:
        return False

    def layers(c: Config) -> dict:
        return {k: v for k, v in config_to_dict(c)["unet"].items()
                if k not in ("attention_resolutions", "position_embedding", "text_mixer_layers")}

    return (layers(cfg) == layers(source) and set(attention_levels(source)) <= set(attention_levels(cfg))
            and cfg.unet.position_embedding >= source.unet.position_embedding
            and cfg.unet.text_mixer_layers >= source.unet.text_mixer_layers)


def load_init(cfg: Config, spec: Path) -> DiffusionModel:
    """The --init checkpoint; its model must have the config's shape (image size, text, U-Net,
    denoiser), or be one that the config grows (``grows_from``), while the [train] section stays
    the run's own."""
    source = load_model(spec)  # a missing or bad file is a CheckpointError naming it
    differing = model_differences(cfg, source.config)
    if differing and not grows_from(cfg, source.config):
        raise InputError(f"--init {spec}: the checkpoint was made with another model config "
                         f"(different {', '.join(differing)}); train with its config, or one that only "
                         "changes the image size (with attention at the same levels), adds attention "
                         "levels, turns on unet.position_embedding, adds unet.text_mixer_layers or a layout predictor "
                         "(the training noise distribution, denoiser.p_mean, p_std and high_noise_*, may differ)")
    return source


def load_init_weights(model: DiffusionModel, source: DiffusionModel, say: Callable[[str], None]) -> None:
    """Copy the --init model's weights (``load_init`` checked that ``model`` grows it). At another
    image size only the denoiser and the text tower carry over; layers the source lacks keep their
    initialisation, which makes them the identity."""
    other_size = source.config.image_size != model.config.image_size
    target = model.denoiser if other_size else model
    weights = (source.denoiser if other_size else source).state_dict()
    if model.layout is None and source.layout is not None:
        say("--init: the config has no [layout]: the checkpoint's layout predictor is left out")
        weights = {k: v for k, v in weights.items() if not k.startswith("layout.")}
    if model.layout is not None and source.layout is not None and model.config.layout != source.config.layout:
        say("--init: the config's [layout] differs from the checkpoint's: its layout predictor is left out and "
            "the run's layout stage trains a new one")
        weights = {k: v for k, v in weights.items() if not k.startswith("layout.")}
    if model.upscaler is None and source.upscaler is not None:
        say("--init: the config has no [upscale]: the checkpoint's upscaler is left out")
        weights = {k: v for k, v in weights.items() if not k.startswith("upscaler.")}
    missing, unexpected = target.load_state_dict(weights, strict=False)
    grown = (".pos_proj.", ".attn.", ".text_mixer.", ".layout.", ".upscaler.")
    if unexpected or any(all(part not in f".{k}" for part in grown) for k in missing):
        raise RuntimeError(f"--init: weights that do not fit: {unexpected or missing}")  # load_init prevents it
    if other_size:
        load_text_tower(model, source, say, "--init")
        say(f"--init: the model was trained at {source.config.image_size} px; its U-Net continues at "
            f"{model.config.image_size} px")
    added = [f"transformer blocks at {model.config.image_size // 2**level} px"
             for level in sorted(set(attention_levels(model.config)) - set(attention_levels(source.config)))]
    if model.config.unet.position_embedding and not source.config.unet.position_embedding:
        added.append("the position embedding")
    new_mixers = model.config.unet.text_mixer_layers - source.config.unet.text_mixer_layers
    if new_mixers:
        added.append(f"{new_mixers} text mixer layer{'s' if new_mixers > 1 else ''}")
    if model.layout is not None and source.layout is None:
        say("--init: the checkpoint has no layout predictor; the run's layout stage trains a new one")
    if model.upscaler is not None and source.upscaler is None:
        say("--init: the checkpoint has no upscaler; the run's upscaling stage trains a new one")
    if added:
        grown_tensors = sum(not k.startswith(("layout.", "upscaler.")) for k in missing)
        say(f"--init: {' and '.join(added)} added ({grown_tensors} tensors), starting as the identity")


def load_text_tower(model: DiffusionModel, source: DiffusionModel, say: Callable[[str], None],
                     flag: str = "--text-encoder") -> None:
    """Copy --text-encoder's CLIP into ``model``. A checkpoint made for another image size has an
    image tower of other shapes: then only the text tower is copied (the U-Net never sees the image
    tower; it serves `diffgen eval`, which then has no trained image features), and the user is told."""
    theirs = source.text_encoder.state_dict()
    mine = model.text_encoder.state_dict()
    differing = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if any(".visual." not in f".{k}" for k in differing):
        raise InputError(f"{flag}: that checkpoint's text tower has other shapes")
    if differing:  # the whole image tower stays fresh, not a mix of copied and fresh layers
        theirs = {k: v for k, v in theirs.items() if ".visual." not in f".{k}"}
    model.text_encoder.load_state_dict(theirs, strict=not differing)
    if differing:
        say(f"{flag}: the checkpoint was made for another image size; its text tower is used, "
            f"the CLIP image tower ({len(differing)} tensors of other shapes) stays untrained")
