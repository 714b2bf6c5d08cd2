"""Prior pictures for an adapter run: the base model's own drawings of everyday subjects.

DreamBooth's prior preservation (Ruiz et al. 2023) trains on pictures the base model itself
generates for other prompts, so that the adapted model keeps drawing them as before. Here they
serve twice (adapter_stage.py):

- **the guard against drift**: each step, prior pictures are noised and the adapted U-Net is asked,
  under their own caption (or guidance's empty prompt), for the frozen base U-Net's prediction. A
  guard on the folder's own pictures under other prompts (what the run did before) keeps the
  model's answers on pictures of the new thing only; sampling "a cat" walks through noisy cats,
  and these are noisy cats;
- **the other object of a two-object scene** (adapter_scenes.py): "a kangaroo above a dog" is
  composed from a folder picture and the base model's dog, each in its predicted box, so the whole
  scene is trained (the dog's box used to be left out of the loss, with nothing to show).

They are drawn once, at the run's start, with the sampling defaults (``PRIOR_SEEDS`` seeds of each
of ``OTHERS``), and kept in the run folder (``prior.safetensors``), so a resumed run trains on
the very same pictures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffgen.engine.model import DiffusionModel
from diffgen.errors import InputError
from diffgen.training.adapter_scenes import OTHERS

PRIOR_SEEDS = 2
FILE_NAME = "prior.safetensors"


@dataclass(frozen=True)
class PriorPictures:
    """The base model's pictures (N, C, H, W in [-1, 1]) and the prompt of each."""

    images: torch.Tensor
    prompts: tuple[str, ...]

    def of(self, prompt: str) -> list[int]:
        """The rows drawn for ``prompt``."""
        return [i for i, p in enumerate(self.prompts) if p == prompt]


def prior_pictures(model: DiffusionModel, folder: Path, seed: int, say: Callable[[str], None] = print
                   ) -> PriorPictures:
    """The prior pictures of a run in ``folder``: read from its ``prior.safetensors`` when a
    (resumed) run drew them already, else drawn with ``model`` (the base, no adapter attached) and
    written there. The file must name the same base model, prompts and seeds."""
    from safetensors.torch import load_file, save_file

    from diffgen.fileio import atomic_write

    prompts = tuple(p for p in OTHERS for _ in range(PRIOR_SEEDS))
    seeds = [seed * 1000 + k for k in range(len(prompts))]
    wanted = {"base_model_hash": model.content_hash or "", "prompts": list(prompts), "seeds": seeds}
    path = folder / FILE_NAME
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            recorded = json.loads((handle.metadata() or {}).get("prior", "{}"))
        if recorded != wanted:
            raise InputError(f"{path} holds another run's prior pictures: choose another -o folder")
        return PriorPictures(load_file(str(path))["images"], prompts)
    images = draw(model, list(prompts), seeds)
    say(f"drew {len(prompts)} prior pictures with the base model ({', '.join(OTHERS)}; {PRIOR_SEEDS} seeds each)")
    atomic_write(path, lambda tmp: save_file({"images": images.contiguous()}, tmp,
                                             metadata={"prior": json.dumps(wanted)}))
    return PriorPictures(images, prompts)


def draw(model: DiffusionModel, prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """``model``'s images of ``prompts`` at the sampling defaults, at its base size (N, C, H, W)."""
    from diffgen.sampling.generate import generate
    from diffgen.sampling.tasks import ImageTask, max_batch_size

    tasks = [ImageTask(index=k, prompt=p, seed=s, upscale=False) for k, (p, s) in enumerate(zip(prompts, seeds))]
    was_training = model.denoiser.training
    model.denoiser.eval()
    try:
        out = [image for _, image, _ in generate(model, tasks, max_batch_size(model.config.image_size))]
    finally:
        model.denoiser.train(was_training)
    return torch.stack(out).to(model.device)
