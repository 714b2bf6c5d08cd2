"""Adapter files: a small safetensors file of LoRA pairs and/or a word's embedding, tied to its base.

Metadata (all strings): ``format`` "diffgen-adapter", ``format_version``, ``base_model_hash`` (the
base checkpoint's content hash: an adapter loads into that model only), ``kind`` (lora, embedding
or both), ``rank``, ``trigger`` (JSON list of the words it was taught), ``recipe`` (JSON: the
training settings), ``name`` and ``content_hash`` (SHA-256 over the tensors). Never a pickle.

Sampling names an adapter ``FILE[:WEIGHT]`` (``--adapter``, ``Model.sample(adapters=...)``) or
``<lora:NAME:WEIGHT>`` in a prompt (AUTOMATIC1111's syntax), NAME resolved in the adapters folder;
a PNG recipe records each adapter's name, weight and file SHA-256, and a replay finds it again by
name and refuses a missing or changed one.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffgen.engine.adapters import Adapter, Attached, attach, lora_layers
from diffgen.errors import CheckpointError, InputError
from diffgen.fileio import atomic_write
from diffgen.hashing import content_hash, file_sha256
from diffgen.side_files import read_side_file

FORMAT_NAME = "diffgen-adapter"
FORMAT_VERSION = 1
KINDS = ("lora", "embedding", "both")
ENV_ADAPTERS = "DIFFGEN_ADAPTERS"
DEFAULT_ADAPTER_DIR = Path("adapters")
MAX_ADAPTER_BYTES = 256 * 2**20  # far above any rank on these models; a bigger file is not an adapter
_LORA_TAG = re.compile(r"<lora:([^:<>]*)(?::([^<>]*))?>")


def adapter_dir(folder: Path | None = None) -> Path:
    """Where ``<lora:NAME>`` looks: the given folder, else $DIFFGEN_ADAPTERS, else ./adapters."""
    return folder if folder is not None else Path(os.environ.get(ENV_ADAPTERS) or DEFAULT_ADAPTER_DIR)


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter to sample with: its file and weight (1 = as trained, 0 = not at all)."""

    path: Path
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.path.stem


def _weight(text: str, where: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise InputError(f"{where}: the weight '{text}' is not a number") from None
    if not math.isfinite(weight) or abs(weight) > 10:
        raise InputError(f"{where}: the weight must be a number from -10 to 10, got {text}")
    return weight


def parse_spec(text: str | Path | tuple[Any, Any]) -> AdapterSpec:
    """``FILE`` or ``FILE:WEIGHT`` (or a (file, weight) pair from Python) as a spec."""
    if isinstance(text, tuple):
        return AdapterSpec(Path(text[0]), _weight(str(text[1]), f"adapter {text[0]}"))
    text = str(text)
    head, _, tail = text.rpartition(":")
    # FILE:WEIGHT unless the whole text is a file (or the part after the colon is a path's)
    if head and "/" not in tail and not Path(text).is_file():
        return AdapterSpec(Path(head), _weight(tail, f"--adapter {text}"))
    return AdapterSpec(Path(text))


def prompt_adapters(prompt: str, folder: Path) -> tuple[str, list[AdapterSpec]]:
    """The prompt without its ``<lora:NAME:WEIGHT>`` tags, and the adapters they name in ``folder``."""
    specs = []
    for match in _LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), match.group(2)
        if not re.fullmatch(r"[\w.+-]+", name) or name.startswith("."):
            raise InputError(f"{match.group(0)}: an adapter is named by its file name in {folder}, without a path")
        specs.append(AdapterSpec(folder / f"{name}.safetensors",
                                 1.0 if weight is None else _weight(weight.strip(), match.group(0))))
    return " ".join(_LORA_TAG.sub(" ", prompt).split()), specs


def save_adapter(path: Path, adapter: Adapter, base_hash: str, kind: str, trigger: list[str],
                 recipe: dict[str, Any], name: str) -> None:
    """Write the adapter atomically with its metadata (float32 tensors; see the module doc)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "base_model_hash": base_hash,
                "kind": kind, "rank": str(adapter.rank), "trigger": json.dumps(trigger),
                "recipe": json.dumps(recipe, sort_keys=True), "name": name,
                "content_hash": content_hash(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


@dataclass
class AdapterFile:
    """An adapter read from disk: its module, its metadata and the file's SHA-256."""

    adapter: Adapter
    metadata: dict[str, str]
    sha256: str

    @property
    def trigger(self) -> list[str]:
        return list(json.loads(self.metadata.get("trigger", "[]")))


def read_adapter(path: Path) -> AdapterFile:
    """Read and check an adapter file; every problem is one line (exit 2)."""
    metadata, tensors = read_side_file(path, "adapter", MAX_ADAPTER_BYTES, FORMAT_NAME, FORMAT_VERSION)
    if content_hash(tensors) != metadata.get("content_hash"):
        raise CheckpointError(f"{path} is damaged: its tensors do not match its content hash")
    try:
        adapter = adapter_from_tensors(tensors, int(metadata["rank"]))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is a damaged adapter ({str(exc).splitlines()[0]})") from None
    return AdapterFile(adapter, metadata, file_sha256(path))


def adapter_from_tensors(tensors: dict[str, torch.Tensor], rank: int) -> Adapter:
    """An Adapter shaped by the stored tensors, holding them."""
    lora = {}
    for key, value in tensors.items():
        if key.startswith("lora.") and key.endswith("__down"):
            up = tensors[key[: -len("__down")] + "__up"]
            lora[key[len("lora."): -len("__down")].replace("__", ".")] = (value.shape[1], up.shape[0])
    ids = tensors.get("trigger_ids")
    adapter = Adapter(lora, rank, ids.tolist() if ids is not None else None, tensors.get("vectors"))
    adapter.load_state_dict(tensors)
    return adapter


def attach_adapters(model: Any, specs: list[AdapterSpec]) -> Attached:
    """Hook each adapter into ``model`` (a DiffusionModel) at its weight; ``model.adapters`` then
    lists them for the recipes (name, weight, sha256). An adapter for another base model, or for
    layers this model lacks, is refused before anything is attached."""
    loaded = []
    for spec in specs:
        found = read_adapter(spec.path)
        base = found.metadata.get("base_model_hash", "")
        if base != (model.content_hash or ""):
            raise InputError(f"adapter {spec.path} was trained for model {base[:10]}, not this one "
                             f"({(model.content_hash or '?')[:10]})")
        missing = set(found.adapter.lora_pairs()) - set(lora_layers(model.denoiser.net))
        if missing:
            raise InputError(f"adapter {spec.path} adapts layers this model lacks ({sorted(missing)[0]})")
        loaded.append((spec, found))
    attached = Attached()
    device = model.device
    for spec, found in loaded:
        attach(found.adapter.to(device), model.denoiser.net, model.text_encoder.clip.token_embedding,
               spec.weight, attached)
    model.adapters = [{"name": spec.name, "weight": spec.weight, "sha256": found.sha256} for spec, found in loaded]
    return attached


def detach_adapters(model: Any, attached: Attached) -> None:
    """Remove the hooks ``attach_adapters`` added; the model is the base model again."""
    attached.remove()
    model.adapters = []


def replay_specs(recorded: Any, folder: Path, given: list[AdapterSpec], source: Path) -> list[AdapterSpec]:
    """The adapters a replayed recipe names, found by name (among ``given``, else in ``folder``)
    and checked by SHA-256 against the recipe: missing or changed is one line."""
    if not isinstance(recorded, list) or not all(
            isinstance(a, dict) and isinstance(a.get("name"), str) and isinstance(a.get("sha256"), str)
            and isinstance(a.get("weight"), (int, float)) for a in recorded):
        raise InputError(f"{source}: the recipe's adapters are damaged")
    by_name = {spec.name: spec.path for spec in given}
    specs = []
    for entry in recorded:
        path = by_name.get(entry["name"], folder / f"{entry['name']}.safetensors")
        if not path.is_file():
            raise InputError(f"--replay: {source} was made with adapter {entry['name']} "
                             f"(sha256 {entry['sha256'][:12]}), not found at {path}")
        if file_sha256(path) != entry["sha256"]:
            raise InputError(f"--replay: {path} has changed since {source} was made "
                             f"(sha256 {entry['sha256'][:12]} recorded)")
        specs.append(AdapterSpec(path, float(entry["weight"])))
    return specs


def run_adapters(prompts: list[str], given: list[Any], folder: Path | None, tags: bool = True
                 ) -> tuple[list[str], list[AdapterSpec]]:
    """The prompts without their ``<lora:...>`` tags, and every adapter of the run: ``given``
    (``FILE[:WEIGHT]`` texts, paths or (file, weight) pairs) then the tags'. Adapters apply to a whole
    run, so prompts of one run must name the same ones. ``tags=False`` leaves the prompts as they are."""
    found = [prompt_adapters(p, adapter_dir(folder)) if tags else (p, []) for p in prompts]
    tagged = {tuple(specs) for _, specs in found}
    if len(tagged) > 1:
        raise InputError("the prompts of one run name different <lora:...> adapters: "
                         "sample them in separate runs")
    specs = [parse_spec(g) for g in given] + (list(next(iter(tagged))) if tagged else [])
    if len({s.name for s in specs}) < len(specs):
        raise InputError(f"an adapter is named twice ({', '.join(s.name for s in specs)})")
    return [p for p, _ in found], specs
