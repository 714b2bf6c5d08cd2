"""`diffgen upscale`: existing pictures enlarged 2x by a model's upscaler (engine/upscaler.py).

A PNG that this model made at its base size (``--no-upscale``) keeps its recipe, now asking for the
upscale: its noise comes from the recipe's seed and it is computed at the recipe's batch placement,
so the result is byte for byte what ``diffgen sample`` with the upscale writes, and ``--replay``
of the new PNG regenerates it. Any other picture is upscaled without a recipe (from ``--seed``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffgen.engine.model import DiffusionModel
from diffgen.engine.pixels import from_uint8
from diffgen.errors import InputError
from diffgen.sampling.tasks import max_batch_size

# The upscaler's activations grow with the picture (about 1 GB at this size); larger inputs are
# refused before any work rather than running out of memory halfway.
MAX_INPUT_PIXELS = 512 * 512


@dataclass(frozen=True)
class UpscaleInput:
    """One checked input: its pixels, and the recipe it keeps (None: upscaled without one)."""

    path: Path
    image: torch.Tensor  # (3, H, W) in [-1, 1]
    recipe: dict[str, Any] | None
    note: str = ""  # why a diffgen recipe was not kept, for the user


@dataclass(frozen=True)
class UpscaleResult:
    source: Path
    path: Path
    recipe_kept: bool
    note: str = ""  # why a diffgen recipe was not kept


def read_input(path: Path, model: DiffusionModel) -> UpscaleInput:
    """The picture at ``path`` checked (a readable image of at most MAX_INPUT_PIXELS), transparency
    on white, with its diffgen recipe where this model made it at the base size; InputError else."""
    import json

    import numpy as np
    from PIL import Image

    from diffgen.data import check_image
    from diffgen.sampling.images import RECIPE_KEY

    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image")
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    checked = check_image(path)
    if isinstance(checked, str):
        raise InputError(f"{path}: {checked}")
    if checked[0] * checked[1] > MAX_INPUT_PIXELS:
        raise InputError(f"{path} is {checked[0]} x {checked[1]}: diffgen upscale takes pictures of at most "
                         f"{MAX_INPUT_PIXELS:,} pixels (e.g. 512 x 512)")
    with Image.open(path) as opened:  # check_image refused decompression bombs
        text = opened.info.get(RECIPE_KEY)
        rgba = opened.convert("RGBA")
    picture = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    image = from_uint8(torch.from_numpy(np.array(picture)).permute(2, 0, 1))
    recipe, note = None, ""
    if text is not None:
        try:
            recipe = json.loads(text)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
            recipe = None
        size = model.config.image_size
        if not isinstance(recipe, dict) or (batch := _recipe_batch(recipe)) is None:
            recipe, note = None, "its diffgen recipe is damaged"
        elif recipe.get("model_hash") != model.content_hash:
            recipe, note = None, "another model made it"
        elif recipe.get("upscale") or checked != (size, size):
            recipe, note = None, "it is not at the model's base size"
        elif batch > max_batch_size(size):  # every row of the batch is computed, as a replay does
            recipe, note = None, f"it was computed in a batch of {batch:,}, more than this model computes at once"
    return UpscaleInput(path, image, recipe, note)


def _recipe_batch(recipe: dict[str, Any]) -> int | None:
    """The size of the batch a recipe was computed in (1 if it does not say), None if it is damaged:
    checked with every input, before the first picture is computed."""
    from diffgen.sampling.tasks import placement_of, task_from_recipe

    try:
        task_from_recipe(recipe)
        return (placement_of(recipe) or (1, 0))[0]
    except InputError:
        return None


def upscale_input(model: DiffusionModel, item: UpscaleInput, seed: int) -> tuple[torch.Tensor, dict | None]:
    """(the 2x picture (3, 2H, 2W) in [-1, 1], its recipe or None). A kept recipe's image is computed
    at the recipe's batch placement, as ``diffgen sample`` computes it (sampling/generate.py)."""
    from diffgen.engine.upscaler import upscale, upscale_generator
    from diffgen.sampling.tasks import placement_of, recipe, task_from_recipe

    assert model.upscaler is not None
    if item.recipe is None:
        with torch.inference_mode():
            high = upscale(model.upscaler, item.image[None].to(model.device), [upscale_generator(seed)])
        return high[0].float().cpu(), None
    task = dataclasses.replace(task_from_recipe(item.recipe), upscale=True)
    size, row = placement_of(item.recipe) or (1, 0)
    with torch.inference_mode():  # every row the same image, as a replay computes it
        high = upscale(model.upscaler, item.image[None].expand(size, -1, -1, -1).to(model.device),
                       [upscale_generator(task.seed) for _ in range(size)])
    return high[row].float().cpu(), recipe(task, model, item.recipe.get("model", "default"), (size, row))


def upscale_files(model: DiffusionModel, paths: list[Path], out_dir: Path, seed: int = 0,
                  overwrite: bool = False) -> Iterator[UpscaleResult]:
    """Upscale each picture into ``out_dir`` under its own name (as a PNG). Every input and output
    name is checked before the first picture is computed."""
    from diffgen.sampling.images import save_png, to_pil

    if model.upscaler is None:
        raise InputError("this model has no upscaler (its config has no [upscale] section; "
                         "`diffgen train --config upscale-stage` trains one)")
    targets: dict[Path, Path] = {}
    for path in paths:
        target = out_dir / f"{path.stem}.png"
        if target in targets.values():
            raise InputError(f"two inputs would both be written to {target}: upscale them into separate folders")
        if path.resolve() == target.resolve():
            raise InputError(f"{path} would be overwritten by its own upscale: choose another -o folder")
        if target.is_symlink():
            raise InputError(f"{target} is a symbolic link: diffgen writes no file through one; remove it "
                             "or choose another -o folder")
        if target.exists() and not overwrite:
            raise InputError(f"{target} exists: add --overwrite to replace it, or choose another -o folder")
        targets[path] = target
    inputs = [read_input(path, model) for path in paths]
    for item in inputs:
        high, made = upscale_input(model, item, seed)
        save_png(to_pil(high[None])[0], targets[item.path], made)
        yield UpscaleResult(item.path, targets[item.path], made is not None, item.note)
