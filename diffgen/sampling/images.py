"""Images: tensor <-> PIL, PNG metadata (A1111 ``parameters`` + diffgen recipe), grids, filenames.

Kept free of torch at import time so the CLI can read PNG recipes without loading the model stack.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from diffgen.errors import InputError

if TYPE_CHECKING:
    import torch

RECIPE_KEY = "diffgen"
PARAMETERS_KEY = "parameters"
SLUG_MAX_CHARS = 48


def slugify(prompt: str, max_chars: int = SLUG_MAX_CHARS) -> str:
    """A short lower-case ASCII form of a prompt: letters, digits and single hyphens only.

    It can never hold a path separator, a dot or anything else that could leave the output folder.
    """
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    slug = slug[:max_chars].rstrip("-")
    return slug or "untitled"


def image_filename(index: int, seed: int, prompt: str) -> str:
    """``{index:05d}-{seed}-{slug}.png``."""
    return f"{index:05d}-{seed}-{slugify(prompt)}.png"


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> list of RGB PIL images (rounded to the nearest level); DiffgenError
    for NaN or infinite values (engine/pixels.py require_finite), never a silently black image."""
    import torch

    from diffgen.engine.pixels import require_finite

    pixels = ((require_finite(images.detach()).float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).numpy(), "RGB") for p in pixels]


def from_pil(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """PIL image -> (3, H, W) float tensor in [-1, 1]; resized to ``size`` if given."""
    import numpy as np
    import torch

    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float() / 127.5 - 1


def a1111_parameters(recipe: dict[str, Any]) -> str:
    """The ``parameters`` text as AUTOMATIC1111's web UI writes it (and its ecosystem reads it)."""
    lines = [recipe["prompt"]]
    if recipe.get("negative"):
        lines.append(f"Negative prompt: {recipe['negative']}")
    fields = [
        ("Steps", recipe["steps"]),
        ("Sampler", recipe["sampler_label"]),
        ("Schedule type", recipe["schedule"].capitalize()),
        ("CFG scale", recipe["guidance"]),
        ("Seed", recipe["seed"]),
        ("Size", f"{recipe['width']}x{recipe['height']}"),
        ("Model hash", (recipe.get("model_file_sha256") or recipe["model_hash"])[:10]),
        ("Model", recipe["model"]),
    ]
    edit = recipe.get("edit")
    if isinstance(edit, dict):  # image-to-image / inpainting, in A1111's words
        fields.append(("Denoising strength", edit.get("strength")))
        if edit.get("mask"):
            fields.append(("Mask blur", edit.get("mask_blur")))
    fields.append(("Version", f"diffgen {recipe['version']}"))
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields))
    return "\n".join(lines)


def _quote(value: Any) -> str:
    """A value as A1111 writes it: plain, or JSON-quoted when a comma, colon, quote or newline in it
    would otherwise end the field for the readers that split ``Key: value, Key: value``."""
    text = str(value)
    if not any(c in text for c in ',:"\n'):
        return text
    return json.dumps(text, ensure_ascii=False)


def png_info(recipe: dict[str, Any]) -> PngImagePlugin.PngInfo:
    """PNG text chunks: A1111 ``parameters`` and the full JSON recipe under ``diffgen``."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(recipe))
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True))
    return info


def save_png(image: Image.Image, path: Path, recipe: dict[str, Any] | None = None,
             text: dict[str, str] | None = None) -> None:
    """Write a PNG (with recipe chunks and extra ``text`` chunks if given) to a temporary name,
    then rename it into place."""
    from diffgen.fileio import atomic_write

    info = png_info(recipe) if recipe is not None else PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_recipe(path: Path) -> dict[str, Any]:
    """The diffgen JSON recipe stored in a PNG; InputError if there is none."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # one line, not Pillow's warning
            with Image.open(path) as image:
                text = image.info.get(RECIPE_KEY)
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{path} claims to be larger than {(Image.MAX_IMAGE_PIXELS or 0) // 1_000_000} megapixels; "
                         "not an image diffgen made") from None
    except (OSError, SyntaxError, ValueError):
        raise InputError(f"{path} is not a readable image") from None
    if text is None:
        raise InputError(f"{path} has no diffgen recipe in its metadata (not made by diffgen?)")
    try:
        recipe = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
        raise InputError(f"{path} has a damaged diffgen recipe") from None
    if not isinstance(recipe, dict) or "prompt" not in recipe:
        raise InputError(f"{path} has a damaged diffgen recipe")
    return recipe


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: Any, width: int, max_lines: int = 2) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".") + "..."
    return lines


def labelled_grid(
    images: list[Image.Image], labels: list[str], columns: int | None = None, cell: int = 128,
) -> Image.Image:
    """A grid of images (scaled to ``cell`` px, nearest-neighbour) with a caption under each."""
    if not images:
        raise ValueError("a grid needs at least one image")
    columns = columns or min(len(images), 8)
    rows = -(-len(images) // columns)
    font = _font(max(10, cell // 10))
    line_height = int(font.size * 1.25) if hasattr(font, "size") else 12
    label_height = 2 * line_height + 6
    pad = 4
    grid = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + label_height + pad) + pad),
                     "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, label) in enumerate(zip(images, labels)):
        x = pad + (i % columns) * (cell + pad)
        y = pad + (i // columns) * (cell + label_height + pad)
        grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        for j, line in enumerate(_wrap(label, draw, font, cell)):
            draw.text((x, y + cell + 3 + j * line_height), line, fill="black", font=font)
    return grid


def trajectory_strip(frames: list[Image.Image], cell: int = 64) -> Image.Image:
    """Clean-image estimates, one per step, side by side: the path from noise to picture."""
    strip = Image.new("RGB", (cell * len(frames), cell), "white")
    for i, frame in enumerate(frames):
        strip.paste(frame.resize((cell, cell), Image.Resampling.NEAREST), (i * cell, 0))
    return strip
