"""Pictures sent in a request (base64, as AUTOMATIC1111's img2img sends them), kept as files.

Image-to-image reads its input from a file and its recipe names that file and its SHA-256
(sampling/edits.py), so that ``diffgen sample --replay`` can check and reuse it. A picture sent to
the server is checked with the one image check of the project (``data.check_image``: readable,
whole, not over Pillow's size limit, not absurdly elongated) and kept in the inputs folder under
its SHA-256, so the same picture sent twice is one file and a served recipe replays on this machine.
No request ever names a file: the server names them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from pathlib import Path

from diffgen.errors import InputError

# the formats a picture may come in, by the name Pillow gives them, and the suffix it is kept with
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}


def decoded(data: object, what: str) -> bytes:
    """The bytes of a base64 picture (optionally a ``data:image/...;base64,`` URL); InputError otherwise."""
    if not isinstance(data, str) or not data:
        raise InputError(f"{what} must be a base64-encoded image")
    text = data
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InputError(f"{what} must be a base64-encoded image (a data URL with ;base64)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


def saved_picture(data: object, folder: Path, what: str) -> Path:
    """The file holding the picture ``data`` in ``folder``, named by its SHA-256; InputError for
    data that is not a usable picture (nothing is kept then)."""
    return kept(decoded(data, what), folder, what)


def kept(raw: bytes, folder: Path, what: str) -> Path:
    """``saved_picture`` for bytes already decoded."""
    from PIL import Image

    from diffgen.data import check_image

    digest = hashlib.sha256(raw).hexdigest()
    for known in FORMATS.values():
        if (folder / f"{digest}{known}").is_file():
            return folder / f"{digest}{known}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot keep the {what}: the inputs folder cannot be made ({exc.strerror})") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{digest}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        checked = check_image(Path(tmp))
        if isinstance(checked, str):
            raise InputError(f"{what}: {checked}")
        with Image.open(tmp) as image:
            kind = image.format or ""
        suffix = FORMATS.get(kind)
        if suffix is None:
            raise InputError(f"{what} must be a PNG, JPEG, WebP or BMP picture")
        path = folder / f"{digest}{suffix}"
        os.replace(tmp, path)
        return path
    finally:
        Path(tmp).unlink(missing_ok=True)
