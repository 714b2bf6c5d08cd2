"""The inputs of image-to-image and inpainting: which files, checked once and named by hash.

A recipe stores the input image's (and mask's) path and SHA-256, so ``--replay`` reproduces the
image from the same files and refuses when a file has changed since.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffgen.errors import InputError
from diffgen.hashing import file_sha256

MAX_MASK_BLUR = 64
# AUTOMATIC1111's default denoising strength for img2img and inpainting
DEFAULT_EDIT_STRENGTH = 0.75


def _check_image_file(path: Path, what: str) -> str:
    """The file's SHA-256 once it is known to be a readable image; InputError otherwise (the
    same checks, and words, as for a training image)."""
    from diffgen.data import check_image

    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    checked = check_image(path)
    if isinstance(checked, str):
        raise InputError(f"{what} {path}: {checked}")
    return file_sha256(path)


@dataclass(frozen=True)
class EditSource:
    """Image-to-image (``strength`` < 1 keeps the input's layout) and, with a mask, inpainting
    (white = repaint; ``mask_blur`` softens its edge by that many pixels)."""

    init_image: str
    init_sha256: str
    strength: float = DEFAULT_EDIT_STRENGTH
    mask: str = ""
    mask_sha256: str = ""
    mask_blur: int = 0

    @classmethod
    def from_files(cls, init_image: Path, strength: float | None = None, mask: Path | None = None,
                   mask_blur: int = 0) -> EditSource:
        """Check the files and settings; the hashes are taken now."""
        source = cls(str(init_image), _check_image_file(Path(init_image), "init image"),
                     DEFAULT_EDIT_STRENGTH if strength is None else strength,
                     str(mask) if mask is not None else "",
                     _check_image_file(Path(mask), "mask") if mask is not None else "", mask_blur)
        return source.validate()

    @classmethod
    def from_recipe(cls, data: Any) -> EditSource:
        """From a PNG recipe's ``edit`` entry (untrusted): InputError for anything malformed."""
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            raise InputError("the diffgen recipe has a damaged 'edit' entry")
        try:
            return cls(**data).validate()
        except TypeError:
            raise InputError("the diffgen recipe has an incomplete 'edit' entry") from None

    def validate(self) -> EditSource:
        for key in ("init_image", "init_sha256", "mask", "mask_sha256"):
            if not isinstance(getattr(self, key), str):
                raise InputError(f"{key} must be text, got {getattr(self, key)!r}")
        if not self.init_image:
            raise InputError("an edit needs an init image")
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
                or not 0 <= strength <= 1:
            raise InputError(f"strength must be a number from 0 to 1, got {strength!r}")
        blur = self.mask_blur
        if isinstance(blur, bool) or not isinstance(blur, int) or not 0 <= blur <= MAX_MASK_BLUR:
            raise InputError(f"mask blur must be a whole number from 0 to {MAX_MASK_BLUR}, got {blur!r}")
        if blur and not self.mask:
            raise InputError("--mask-blur needs a --mask")
        return self

    def check_files(self) -> None:
        """InputError unless the files are readable images (check_image) and the ones the recipe
        names (the same SHA-256): a replay checks them before its run starts. A missing, unreadable
        and changed file get the same words: a recipe is anyone's file, and a different message for
        each would tell its author which paths exist on this machine (and which are images)."""
        for path, digest, what in ((self.init_image, self.init_sha256, "init image"),
                                   (self.mask, self.mask_sha256, "mask")):
            if not path:
                continue
            try:
                same = _check_image_file(Path(path), what) == digest
            except InputError:
                same = False
            if not same:
                raise InputError(f"the {what} {path} is missing, unreadable or changed since the recipe was made")

    def load(self, size: int):
        """(image (3, S, S) in [-1, 1], mask (1, S, S) in [0, 1] or None) at the model's size,
        after checking that the files are the ones the recipe names."""
        import numpy as np
        import torch
        from PIL import ImageFilter

        from diffgen.data import load_image
        from diffgen.engine.pixels import from_uint8

        self.check_files()
        tensor = from_uint8(torch.from_numpy(np.array(load_image(Path(self.init_image), size))).permute(2, 0, 1))
        if not self.mask:
            return tensor, None
        mask_image = load_image(Path(self.mask), size, background=(0, 0, 0)).convert("L")
        if self.mask_blur:
            # the blur is given in pixels of the model's image, as the mask is used at that size
            mask_image = mask_image.filter(ImageFilter.GaussianBlur(self.mask_blur))
        mask = torch.from_numpy(np.asarray(mask_image, dtype=np.float32) / 255)[None]
        return tensor, mask
