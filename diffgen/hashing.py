"""Content hashes of tensor sets: what names a model in PNG metadata and vouches for a training
state. Kept apart from the checkpoint code so that the state files need no model imports."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def content_hash(tensors: dict[str, torch.Tensor], config_json: str = "") -> str:
    """SHA-256 over the config JSON and the names, dtypes, shapes and bytes of all tensors, in
    name order (hex): it changes when any weight or any setting changes."""
    digest = hashlib.sha256(config_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks: what ``sha256sum`` prints."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
