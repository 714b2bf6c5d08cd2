"""Checkpoints: one safetensors file with every weight and the config as JSON metadata.

Never pickle. Files are written to a temporary name in the same folder, flushed and renamed, so
a crash leaves either the old file or the new one, never half of one. Reading validates the
safetensors header against the file size before any tensor is touched, so a truncated or foreign
file gets a one-line error instead of a deep stack trace.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from diffgen import __version__
from diffgen.config import Config, config_from_dict, config_to_dict
from diffgen.engine.clip_text import is_image_tower_key
from diffgen.engine.model import DiffusionModel, build_model
from diffgen.errors import CheckpointError, ConfigError, DiffgenError
from diffgen.fileio import atomic_write
from diffgen.hashing import content_hash, file_sha256
from diffgen.state import (
    EMA_TEXT_PREFIX,
    EMA_UNET_PREFIX,
    EMA_UPSCALER_PREFIX,
    TrainingState,
    read_state,
    with_prefix,
    without_prefix,
)

FORMAT_NAME = "diffgen"
FORMAT_VERSION = 1
# A safetensors header is JSON of a few hundred bytes per tensor; anything larger is not one.
_MAX_HEADER_BYTES = 100 * 2**20
ENV_CHECKPOINT = "DIFFGEN_CHECKPOINT"
# Where the embedded default model may live: inside the package (wheel installs) or at the top of
# a source checkout (editable installs).
_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT_CANDIDATES = [_PACKAGE_DIR / "checkpoints" / "default.safetensors",
                                 _PACKAGE_DIR.parent / "checkpoints" / "default.safetensors"]
# Metadata entries stored as plain strings; every other entry is JSON.
_PLAIN_METADATA = frozenset({"format", "format_version", "content_hash", "diffgen_version"})


def save_checkpoint(
    path: str | Path, tensors: dict[str, torch.Tensor], config: Config,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write ``tensors`` and ``config`` (plus JSON-able ``extra`` entries) atomically; return the hash."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    config_json = json.dumps(config_to_dict(config))
    digest = content_hash(tensors, config_json)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": config_json,
        "content_hash": digest,
        "diffgen_version": __version__,
    }
    for key, value in (extra or {}).items():
        metadata[key] = json.dumps(value)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return digest


def _read_header(path: Path) -> dict[str, Any]:
    """Validate the safetensors framing and return the parsed header."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    size = path.stat().st_size
    not_safetensors = CheckpointError(f"{path} is not a safetensors file")
    with open(path, "rb") as handle:
        prefix = handle.read(9)
        if prefix.startswith(b"PK\x03\x04"):
            raise CheckpointError(
                f"{path} is a zip/pickle file (a PyTorch .pt/.ckpt?); diffgen reads only safetensors")
        if len(prefix) < 9 or prefix[8:9] != b"{":  # the JSON header opens right after the length
            raise not_safetensors
        handle.seek(8)
        (header_len,) = struct.unpack("<Q", prefix[:8])
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise not_safetensors if header_len > _MAX_HEADER_BYTES else CheckpointError(
                f"{path} is truncated (header says {header_len} bytes, file has {size - 8})")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
            raise not_safetensors from None
    try:
        data_end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                       default=0)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        raise not_safetensors from None
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path} is truncated: {size} bytes on disk, {8 + header_len + data_end} expected "
            "(an interrupted copy or download?)")
    return header


def read_checkpoint(path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], Config, dict[str, Any]]:
    """Load (tensors, config, metadata) from a diffgen checkpoint; clear errors for bad files.

    ``metadata`` holds the decoded JSON entries (``config`` excluded). With ``verify`` the content
    hash is recomputed and compared, which catches bit rot and hand-edited files.
    """
    path = Path(path)
    header = _read_header(path)
    raw = header.get("__metadata__") or {}
    if raw.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is a safetensors file but not a diffgen checkpoint")
    if raw.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {raw.get('format_version')!r}; this diffgen "
            f"{__version__} reads version {FORMAT_VERSION}")
    try:
        config = config_from_dict(json.loads(raw["config"]))
    except (KeyError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} has no readable config in its metadata ({exc})") from None
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds an invalid config: {exc}") from None
    metadata: dict[str, Any] = {k: raw[k] for k in _PLAIN_METADATA if k in raw}
    for key in raw.keys() - _PLAIN_METADATA - {"config"}:
        try:
            metadata[key] = json.loads(raw[key])
        except (json.JSONDecodeError, RecursionError):
            raise CheckpointError(f"{path} has unreadable metadata entry '{key}'") from None
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: the file is damaged
        raise CheckpointError(f"{path} is damaged: {str(exc).splitlines()[0]}") from None
    if verify and content_hash(tensors, raw["config"]) != raw.get("content_hash"):
        raise CheckpointError(f"{path} is corrupt: its weights do not match the recorded content hash")
    return tensors, config, metadata


def save_model(path: str | Path, model: DiffusionModel, extra: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> str:
    """Save a DiffusionModel (all weights + config) as one inference checkpoint; return its hash.

    ``dtype`` (e.g. float16) stores the floating-point weights in that type, halving the file;
    ``load_model`` copies them back into float32 parameters.
    """
    tensors = model.state_dict()
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return save_checkpoint(path, tensors, model.config, extra)


class _SkipNormalInit(TorchFunctionMode):
    """Skips ``normal_`` while building on the meta device: there it runs through torch._refs,
    which imports torch._dynamo (about 1 s of every start), and meta tensors hold no values."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.nn.init.normal_, torch.Tensor.normal_):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _anchor_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The shapes of the tensors that carry a config's largest sizes (text context and vocabulary,
    image size, the widths of the U-Net, layout predictor and upscaler), from the config alone."""
    t, u = config.text, config.unet
    shapes: dict[str, tuple[int, ...]] = {"denoiser.net.conv_in.weight": (u.base_channels, u.in_channels, 3, 3)}
    if not t.arch:
        shapes["text_encoder.clip.positional_embedding"] = (t.context_length, t.width)
        shapes["text_encoder.clip.token_embedding.weight"] = (t.vocab_size, t.width)
        # the one tensor image_size shapes (no U-Net weight depends on it): a checkpoint edited to
        # draw 4096 px pictures with a model made for 8 px is refused here
        shapes["text_encoder.clip.visual.positional_embedding"] = \
            ((config.image_size // t.vision_patch_size) ** 2 + 1, t.vision_width)
    if config.layout.width:
        shapes["layout.position"] = (t.context_length, config.layout.width)
    if config.upscale.base_channels:
        shapes["upscaler.net.conv_in.weight"] = (config.upscale.base_channels, 6, 3, 3)
    return shapes


def _check_shapes(path: Path, config: Config, image_tower: bool = True,
                  stored: dict[str, tuple[int, ...]] | None = None) -> None:
    """Compare the file's tensor shapes (``stored``; default: its safetensors header) with those the
    config implies, before the model is built: first a few that carry the config's largest sizes,
    straight from the config (even on the meta device the text tower's attention mask is a real
    context x context tensor: a context of 100,000 asked for 40 GB), then every tensor, on the meta
    device (no memory). A config edited to ask for a huge model is refused before anything is allocated."""
    if stored is None:
        header = _read_header(path)
        stored = {k: tuple(v.get("shape", ())) for k, v in header.items()
                  if k != "__metadata__" and isinstance(v, dict)}
    for name, shape in _anchor_shapes(config).items():
        if stored.get(name) != shape and (name in stored or "visual" not in name):  # a file may lack the image tower
            found = f"is {list(stored[name])} in the file" if name in stored else "is not in the file"
            raise CheckpointError(f"{path} does not match its config: {name} {found}, the config asks for "
                                  f"{list(shape)}")
    with torch.device("meta"), _SkipNormalInit():
        model = build_model(config, load_pretrained_text=False, image_tower=image_tower)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not hasattr(model.text_encoder.clip, "visual"):
        stored = {k: v for k, v in stored.items() if not is_image_tower_key(k)}
    for name, shape in expected.items():
        if name in stored and stored[name] != shape:
            raise CheckpointError(f"{path} does not match its config: {name} is {list(stored[name])} in the "
                                  f"file, the config asks for {list(shape)}")
    missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        names = (missing or unexpected)[:3]
        raise CheckpointError(
            f"{path} does not match its config: {'missing' if missing else 'unexpected'} weights "
            f"{', '.join(names)}{' ...' if len(missing or unexpected) > 3 else ''}")


def load_model(path: str | Path, device: str | torch.device = "cpu", image_tower: bool = True) -> DiffusionModel:
    """Load a DiffusionModel from a checkpoint written by ``save_model``, in eval mode; a training
    state (``state/state-diffusion-N.safetensors``, ``state-upscale-N``) loads too, with its EMA weights.

    ``image_tower=False`` (sampling, encoding) loads CLIP's text tower without its image tower and
    without importing open_clip, which starts about 2 s faster; the file's content hash still
    covers every weight. Training and evaluation need the image tower (the default).
    """
    if re.match(r"^state-(diffusion|upscale)-\d{8}\.safetensors$", Path(path).name):
        return _load_training_state(Path(path)).to(device).eval()
    tensors, config, metadata = read_checkpoint(path)
    _check_shapes(Path(path), config, image_tower)
    model = build_model(config, load_pretrained_text=False, image_tower=image_tower)
    if not hasattr(model.text_encoder.clip, "visual"):
        tensors = {k: v for k, v in tensors.items() if not is_image_tower_key(k)}
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path} does not match its config: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        names = (missing or unexpected)[:3]
        raise CheckpointError(
            f"{path} does not match its config: {'missing' if missing else 'unexpected'} weights "
            f"{', '.join(names)}{' ...' if len(missing or unexpected) > 3 else ''}")
    model.content_hash = metadata["content_hash"]
    model.metadata = metadata
    model.display_name = str(metadata.get("name") or Path(path).stem)
    # what AUTOMATIC1111 and Civitai call the model hash: the file's SHA-256 (sha256sum matches it)
    model.file_sha256 = file_sha256(Path(path))
    model.requires_grad_(False)
    return model.to(device).eval()


def default_checkpoint() -> Path:
    """The checkpoint used without ``-c``: $DIFFGEN_CHECKPOINT, else the embedded default model."""
    env = os.environ.get(ENV_CHECKPOINT)
    if env:
        return Path(env)
    for path in DEFAULT_CHECKPOINT_CANDIDATES:
        if path.is_file():
            return path
    raise DiffgenError(
        "no default model found (looked for checkpoints/default.safetensors). Pass -c FILE, set "
        f"{ENV_CHECKPOINT}, or train one with `diffgen train` (see the README)")


def _load_training_state(path: Path) -> DiffusionModel:
    """A diffusion- or upscaling-stage training state as a model: its config from the state JSON, the
    text encoder from the state, the stage's EMA weights (what the run would ship at that step)."""
    state = read_state(path.parent, path.with_suffix(".json")) if path.with_suffix(".json").is_file() else \
        "its JSON file is missing"
    if not isinstance(state, TrainingState):
        raise CheckpointError(f"{path} cannot be loaded: {state}")
    try:
        config = config_from_dict(state.info["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path}: the state's config is unusable ({exc})") from None
    # the raw weights, then each average over its module (a run that trains the text tower too
    # keeps that tower's average beside the U-Net's)
    weights = without_prefix(state.tensors, "model")
    weights.update(with_prefix(without_prefix(state.tensors, EMA_UNET_PREFIX), "denoiser.net"))
    weights.update(with_prefix(without_prefix(state.tensors, EMA_UPSCALER_PREFIX), "upscaler"))
    weights.update(with_prefix(without_prefix(state.tensors, EMA_TEXT_PREFIX), "text_encoder"))
    # the state's JSON (and so its config) can be edited and its hash recomputed: the config is held
    # to the stored tensors before the model is built, as a checkpoint's is
    _check_shapes(path, config, stored={k: tuple(v.shape) for k, v in weights.items()})
    model = build_model(config, load_pretrained_text=False)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match its config: {str(exc).splitlines()[-1].strip()}") from None
    run = path.parent.parent.name
    model.content_hash = content_hash(model.state_dict(), json.dumps(config_to_dict(config)))
    model.metadata = {"content_hash": model.content_hash, "name": f"{run}-step{state.step}",
                      "training": {"state": str(path), "step": state.step}}
    model.display_name = model.metadata["name"]
    model.file_sha256 = file_sha256(path)
    return model.requires_grad_(False)
