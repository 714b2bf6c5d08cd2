"""Files that sit beside a model (adapters, students): safetensors with a format name and version
in their metadata, read whole and checked the same way, every problem one line (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffgen.errors import CheckpointError, InputError


def read_side_file(path: Path, what: str, max_bytes: int, format_name: str, format_version: int
                   ) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata, tensors) of the diffgen ``what`` ("adapter", "student") in ``path``: it exists,
    is at most ``max_bytes``, is readable safetensors, and names ``format_name`` at
    ``format_version``. The caller checks its own content hash and fields."""
    from safetensors import safe_open

    if not path.is_file():
        raise InputError(f"{what} {path} not found")
    if path.stat().st_size > max_bytes:
        raise CheckpointError(f"{path} is not a diffgen {what} (larger than {max_bytes >> 20} MB)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception:  # noqa: BLE001 - SafetensorError and friends: the file is damaged
        raise CheckpointError(f"{path} is not a diffgen {what} (not a readable safetensors file)") from None
    if metadata.get("format") != format_name:
        raise CheckpointError(f"{path} is not a diffgen {what} (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(format_version):
        raise CheckpointError(f"{path} is {what} format version {metadata.get('format_version')}; "
                              f"this diffgen reads version {format_version}")
    return metadata, tensors
