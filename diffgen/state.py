"""Training state on disk: safetensors tensors + a JSON file, never pickles.

A state is two files named by stage and step: ``state-<stage>-<step>.safetensors`` (model, EMA,
optimizer moments, RNG states) and ``state-<stage>-<step>.json`` (step, optimizer hyper-parameters,
data position, the tensors' content hash). Both are written to temporary names and renamed, the
JSON last: a state exists only once its JSON does, and the JSON names the hash its tensors must
have. A run killed at any moment therefore leaves the previous state intact, and loading skips
anything incomplete.

Training (training/) writes and resumes states; checkpoint.py loads one as a model, so this module
sits below both. The tensors of a module are stored under ``<prefix>.<name>`` (``with_prefix``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from diffgen.errors import InputError
from diffgen.fileio import atomic_write
from diffgen.hashing import content_hash

STATE_VERSION = 1
_STATE_NAME = re.compile(r"^state-(clip|diffusion|layout|upscale|adapter|distill)-(\d{8})\.json$")
# an adapter run and a distillation run have one stage each
STAGE_ORDER = {"clip": 0, "diffusion": 1, "layout": 2, "upscale": 3, "adapter": 4, "distill": 5}
# The prefixes of a state's averaged weights: what a run ships, and what loading a state as a model reads
EMA_UNET_PREFIX, EMA_TEXT_PREFIX, EMA_UPSCALER_PREFIX = "ema", "ema_text", "ema_upscaler"
# A state's JSON holds its config, optimizer settings and counters: kilobytes. Past this it is not
# read (a file of gigabytes would have been read whole).
MAX_INFO_BYTES = 64 * 2**20


@dataclass
class TrainingState:
    stage: str
    step: int
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any]


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix.name: tensor}``: how a module's weights are named inside a state or checkpoint."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def without_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix.*``, with the prefix removed (the inverse of ``with_prefix``)."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], list]:
    """Flatten an optimizer's per-parameter state into named tensors plus JSON-able groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"{prefix}.{index}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
    return tensors, state["param_groups"]


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           prefix: str, groups: list) -> None:
    """Inverse of ``optimizer_to_tensors``."""
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1:].split(".", 1)
            per_param.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


def rng_tensors() -> dict[str, torch.Tensor]:
    """The global RNG states (CPU, and CUDA when present) as uint8 tensors."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def save_state(folder: Path, state: TrainingState, keep: int = 2) -> Path:
    """Write a state atomically (tensors first, then the JSON that vouches for them); keep the
    newest ``keep`` states and delete older ones."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"state-{state.stage}-{state.step:08d}"
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()}
    atomic_write(folder / f"{stem}.safetensors", lambda tmp: save_file(tensors, tmp))
    info = {**state.info, "version": STATE_VERSION, "stage": state.stage, "step": state.step,
            "tensors": f"{stem}.safetensors", "tensors_hash": content_hash(tensors)}
    info["info_hash"] = _info_hash(info)
    json_path = folder / f"{stem}.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
    for old in state_files(folder)[:-keep]:
        old.unlink(missing_ok=True)  # the JSON first: from here on the state no longer exists
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return json_path


def state_files(folder: Path) -> list[Path]:
    """State JSON files, oldest first (by stage, then step)."""
    found = []
    for path in folder.glob("state-*.json"):
        match = _STATE_NAME.match(path.name)
        if match:
            found.append((STAGE_ORDER[match[1]], int(match[2]), path))
    return [p for _, _, p in sorted(found)]


def _info_hash(info: dict[str, Any]) -> str:
    """SHA-256 of the JSON's own content (without this entry): an edited step or position shows."""
    import hashlib

    body = {k: v for k, v in info.items() if k != "info_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_state(folder: Path, json_path: Path) -> TrainingState | str:
    """The state a JSON file vouches for, or why it cannot be used."""
    try:
        if json_path.stat().st_size > MAX_INFO_BYTES:
            return f"its JSON is larger than {MAX_INFO_BYTES // 2**20} MB"
        info = json.loads(json_path.read_text())
        tensors = load_file(str(folder / info["tensors"]))
    except Exception as exc:  # noqa: BLE001 - any unreadable state (incl. SafetensorError) is skipped
        return f"unreadable ({type(exc).__name__})"
    if info.get("version") != STATE_VERSION:
        return f"written by another state version ({info.get('version')})"
    # a missing hash counts as a wrong one: deleting the entry let an edited learning rate or data
    # position through (states from before diffgen recorded it are refused with them)
    if "info_hash" not in info:
        return "its JSON has no recorded hash (edited, or written by an older diffgen)"
    if info["info_hash"] != _info_hash(info):
        return "its JSON was edited or damaged (the recorded hash does not match)"
    if content_hash(tensors) != info.get("tensors_hash"):
        return "its tensors do not match the recorded hash"
    match = _STATE_NAME.match(json_path.name)
    if not match or (info.get("stage"), info.get("step")) != (match[1], int(match[2])):
        return "its stage and step do not match its file name"
    return TrainingState(info["stage"], info["step"], tensors, info)


def load_latest_state(folder: Path, say: Callable[[str], None] | None = None) -> TrainingState | None:
    """The newest usable state in ``folder``, or None. Damaged ones are skipped, and ``say`` is
    told which file was skipped and why (falling back silently would hide lost work)."""
    for json_path in reversed(state_files(folder)):
        state = read_state(folder, json_path)
        if isinstance(state, TrainingState):
            return state
        if say is not None:
            say(f"warning: skipped the training state {json_path}: {state}; trying the one before it")
    return None


def require_state(folder: Path, say: Callable[[str], None] | None = None) -> TrainingState:
    state = load_latest_state(folder, say)
    if state is None:
        hint = ("its state files are damaged: move the folder away and start again"
                if list(folder.glob("state-*.json")) else "start without --resume")
        raise InputError(f"--resume: no usable training state in {folder} ({hint})")
    return state
