"""Is a generated single-object emoji scene recognisable? Template matching against the sprites.

The emoji data draws a single object by scaling its sprite so the longer side spans one of three
extents (diffgen.emoji.scenes.SINGLE_SIZES) and pasting it anywhere on a plain background. So every
candidate sprite can be drawn the same way, at every size and every place, over the image's own
background colour, and compared with the image pixel by pixel. The prompted concept should be the
closest of all candidates (top-1), and the object's silhouette should cover the same pixels as the
prompted sprite at its best place (IoU). Real scenes score top-1 and an IoU near 1, the ceiling to
read generated images against; a blob of the right colours at the right place does not.

The search over places is one correlation per size: with D = image - background and
A = alpha * (sprite - background), drawing the sprite at offset p changes the squared error of
"background only" by sum(A^2) - 2 * (D correlated with A)(p).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffgen.emoji.scenes import SINGLE_SIZES

# A pixel belongs to the object when some channel differs from the background by more than this.
OBJECT_THRESHOLD = 40


@dataclass(frozen=True)
class Match:
    """How one image compares with the sprites: the closest name, the rank of the prompted one
    (1 = closest), and the silhouette IoU of the prompted sprite at its best size and place."""

    best: str
    rank: int
    iou: float


def background_colour(image: np.ndarray) -> np.ndarray:
    """Median colour of the one-pixel frame, (3,) floats: the scene's plain background."""
    frame = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(frame.astype(np.float32), axis=0)


def object_mask(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels that differ from the background."""
    return np.abs(image.astype(np.float32) - background).max(axis=2) > OBJECT_THRESHOLD


class SpriteMatcher:
    """The sprites at the data's single-object sizes for ``image_size`` px scenes, ready to match."""

    def __init__(self, sprites: dict[str, Image.Image], image_size: int):
        self.sprites = sprites
        self.names = list(sprites)
        self.size = image_size
        self.extents = sorted({round(frac * image_size) for _, frac in SINGLE_SIZES})
        # per extent: colours (N, 3, e, e) and alpha (N, 1, e, e), each sprite centred in its square
        self.colour: dict[int, torch.Tensor] = {}
        self.alpha: dict[int, torch.Tensor] = {}
        for extent in self.extents:
            self._prepare(extent)

    def _prepare(self, extent: int) -> None:
        if extent not in self.colour:
            squares = [_square(self.sprites[name], extent) for name in self.names]
            rgba = torch.from_numpy(np.stack(squares)).permute(0, 3, 1, 2).float()
            self.colour[extent], self.alpha[extent] = rgba[:, :3], rgba[:, 3:] / 255

    def match(self, image: Image.Image, prompted: str) -> Match:
        """Rank every sprite by its best squared error over sizes and places; IoU for ``prompted``."""
        pixels = np.asarray(image.convert("RGB"))
        if pixels.shape[:2] != (self.size, self.size):
            raise ValueError(f"expected a {self.size} px image, got {pixels.shape[1]}x{pixels.shape[0]}")
        return self._match(pixels, background_colour(pixels), self.extents, prompted)

    def match_region(self, image: Image.Image, prompted: str, box: tuple[int, int, int, int],
                     extents: tuple[int, ...]) -> Match:
        """Like ``match`` inside ``box`` (left, top, right, bottom) only, at the given sprite extents:
        how one object of a two-object scene is judged (the data draws each at a known size)."""
        pixels = np.asarray(image.convert("RGB"))
        left, top, right, bottom = box
        crop = pixels[top:bottom, left:right]
        if min(crop.shape[:2]) < max(extents):
            raise ValueError(f"the region {box} is smaller than the sprite extent {max(extents)}")
        for extent in extents:
            self._prepare(extent)
        return self._match(crop, background_colour(pixels), sorted(set(extents)), prompted)

    def _match(self, pixels: np.ndarray, background: np.ndarray, extents: list[int], prompted: str) -> Match:
        bg = torch.from_numpy(background)[None, :, None, None]
        diff = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None] - bg
        best = torch.full((len(self.names),), float("inf"))
        where: dict[int, tuple[float, int, int, int]] = {}  # sprite -> (change, extent, row, col)
        for extent in extents:
            drawn = self.alpha[extent] * (self.colour[extent] - bg)  # (N, 3, e, e)
            change = drawn.pow(2).sum(dim=(1, 2, 3))[:, None, None] - 2 * F.conv2d(diff, drawn)[0]
            flat = change.flatten(1)
            values, index = flat.min(dim=1)
            width = change.shape[2]
            for k in torch.nonzero(values < best).flatten().tolist():
                where[k] = (float(values[k].item()), extent, int(index[k].item()) // width,
                            int(index[k].item()) % width)
            best = torch.minimum(best, values)
        order = torch.argsort(best).tolist()
        k = self.names.index(prompted)
        _, extent, row, col = where[k]
        # the sprite's silhouette by the same rule as the object's: where drawing it changes a pixel
        drawn = (self.alpha[extent][k] * (self.colour[extent][k] - bg[0])).abs().amax(dim=0)
        silhouette = np.zeros(pixels.shape[:2], dtype=bool)
        silhouette[row:row + extent, col:col + extent] = drawn.numpy() > OBJECT_THRESHOLD
        mask = object_mask(pixels, background)
        iou = float((silhouette & mask).sum() / max(1, (silhouette | mask).sum()))
        return Match(best=self.names[order[0]], rank=order.index(k) + 1, iou=iou)


def _square(sprite: Image.Image, extent: int) -> np.ndarray:
    """(extent, extent, 4) uint8: the sprite scaled as the data composer scales it, centred."""
    scale = extent / max(sprite.size)
    shape = (max(1, round(sprite.width * scale)), max(1, round(sprite.height * scale)))
    scaled = sprite.convert("RGBA").resize(shape, Image.Resampling.LANCZOS)
    square = Image.new("RGBA", (extent, extent), (0, 0, 0, 0))
    square.paste(scaled, ((extent - scaled.width) // 2, (extent - scaled.height) // 2))
    return np.asarray(square)
