"""Student files: a model's distilled few-step student (engine/consistency.py), beside its checkpoint.

A student is a second safetensors file, so that distilling a model leaves the model's file, its
content hash and every recipe and adapter that names it as they were. ``diffgen train --distill``
writes ``RUN/student.safetensors``; ``--fast`` finds a checkpoint's student beside it, as
``NAME.student.safetensors`` for ``NAME.safetensors`` (the default model's would be
``checkpoints/default.student.safetensors``), or takes ``--student FILE``.

Tensors: ``net.*`` (the student's U-Net, the teacher's layout) and ``guidance.*`` (the guidance
embedding). Metadata (strings): ``format`` "diffgen-student", ``format_version``,
``base_model_hash`` (the teacher checkpoint's content hash: a student samples with that model
only), ``settings`` (JSON: the distillation's settings; ``rho`` sets the sampling levels),
``recipe`` (JSON: how it was trained), ``name`` and ``content_hash`` (SHA-256 over the settings and
the tensors). Never a pickle. A fast image's recipe records the student's name and file SHA-256,
and ``--replay`` refuses a missing or changed file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffgen.engine.consistency import AttachedStudent, Student
from diffgen.engine.model import DiffusionModel
from diffgen.engine.unet import UNet
from diffgen.errors import CheckpointError, InputError
from diffgen.fileio import atomic_write
from diffgen.hashing import content_hash, file_sha256
from diffgen.side_files import read_side_file

FORMAT_NAME = "diffgen-student"
FORMAT_VERSION = 1
SUFFIX = ".student.safetensors"
MAX_STUDENT_BYTES = 2**30  # a student is a U-Net's size (tens of MB); a bigger file is not one


def beside(checkpoint: Path) -> Path:
    """Where a checkpoint's student lives: ``NAME.student.safetensors`` next to ``NAME.safetensors``."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + SUFFIX)


def find_student(checkpoint: Path, given: Path | None, flag: str = "--fast", option: str = "--student") -> Path:
    """The student file to sample ``checkpoint`` with: ``given``, else the one beside it. A missing
    one is one line naming where it was looked for and how to make one."""
    path = given if given is not None else beside(checkpoint)
    if given is not None and not given.is_file():
        raise InputError(f"{option} {given}: no such file")
    if not path.is_file():
        raise InputError(f"{flag}: model {checkpoint} has no distilled student ({path.name} not found beside it); "
                         f"make one with `diffgen train DATA --distill --init {checkpoint}` (docs/DISTILL.md) "
                         f"or give {option} FILE")
    return path


def save_student(path: Path, student: Student, base_hash: str, settings: dict[str, Any], recipe: dict[str, Any],
                 name: str, dtype: torch.dtype | None = None) -> str:
    """Write the student atomically with its metadata (floating tensors as ``dtype`` where given,
    e.g. float16 for half the size); returns its content hash."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    settings_json = json.dumps(settings, sort_keys=True)
    digest = content_hash(tensors, settings_json)
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "base_model_hash": base_hash,
                "settings": settings_json, "recipe": json.dumps(recipe, sort_keys=True), "name": name,
                "content_hash": digest}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return digest


def read_student(path: Path, model: DiffusionModel) -> AttachedStudent:
    """The student in ``path``, checked (format, content hash, made from ``model``, shapes) and
    loaded onto the model's device; every problem is one line (exit 2)."""
    metadata, tensors = read_side_file(path, "student", MAX_STUDENT_BYTES, FORMAT_NAME, FORMAT_VERSION)
    if content_hash(tensors, metadata.get("settings", "")) != metadata.get("content_hash"):
        raise CheckpointError(f"{path} is damaged: its tensors and settings do not match its content hash")
    base = metadata.get("base_model_hash", "")
    if base != (model.content_hash or ""):
        raise InputError(f"student {path} was distilled from model {base[:10]}, not from this one "
                         f"({(model.content_hash or '?')[:10]})")
    try:
        rho = float(json.loads(metadata["settings"])["rho"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is a damaged student (no readable settings)") from None
    cfg = model.config
    # a fresh U-Net rather than a copy of the teacher's: hooks attached to the teacher stay there
    net = UNet(cfg.unet, cfg.image_size, model.text_encoder.token_dim, model.text_encoder.pooled_dim)
    student = Student(net, 4 * cfg.unet.base_channels, model.denoiser.sigma_data, model.denoiser.sigma_min,
                      model.denoiser.sigma_max)
    try:
        student.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit this model ({str(exc).splitlines()[-1].strip()})") from None
    student = student.to(model.device).eval().requires_grad_(False)
    return AttachedStudent(student, rho, path.name.removesuffix(SUFFIX).removesuffix(".safetensors"),
                           file_sha256(path))


def attach_student(model: DiffusionModel, path: Path) -> AttachedStudent:
    """Read the student in ``path`` and attach it as ``model.student`` (what fast sampling uses)."""
    model.student = read_student(path, model)
    return model.student


def check_replayed_student(recorded: Any, attached: AttachedStudent, path: Path, source: Path) -> None:
    """A replayed fast image's student must be the file it was made with (by SHA-256)."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        raise InputError(f"{source}: the recipe's student is missing or damaged")
    if attached.sha256 != recorded["sha256"]:
        raise InputError(f"--replay: {source} was made with student {recorded.get('name')} (sha256 "
                         f"{recorded['sha256'][:12]}); {path} is another file: give --student with that one")
