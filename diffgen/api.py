"""The Python API: load a model, sample images, encode prompts.

    import diffgen
    model = diffgen.load()                                  # the embedded default model
    images = model.sample("panda on a bike", n=4, seed=0)   # PIL images, recipe in image.info
    images = model.sample(["a cat", "a dog"], steps=30, guidance=2.5, sampler="heun", negative="blurry")
    encoding = model.encode(["a red apple", "a green apple"])

``diffgen sample`` is a client of the same functions: for the same settings and seeds,
``Model.sample`` returns exactly the pixels the CLI writes into its PNGs (a test compares them).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from diffgen.engine.text import TextEncoding
from diffgen.sampling.settings import DEFAULTS, SamplingSettings


class Model:
    """A loaded diffgen checkpoint, ready to sample and encode."""

    def __init__(self, diffusion_model, name: str):
        self.diffusion_model = diffusion_model
        self.name = name

    @property
    def image_size(self) -> int:
        return self.diffusion_model.config.image_size

    @property
    def content_hash(self) -> str:
        """The checkpoint's content hash (what PNG recipes name the model by)."""
        return self.diffusion_model.content_hash or ""

    @property
    def device(self) -> torch.device:
        return self.diffusion_model.device

    def sample(self, prompts: str | Sequence[str], n: int = 1, seed: int | None = None, *,
               steps: int = DEFAULTS.steps, guidance: float = DEFAULTS.guidance, sampler: str = DEFAULTS.sampler,
               schedule: str = DEFAULTS.schedule, negative: str = DEFAULTS.negative, batch_size: int = 8,
               init_image: str | Path | None = None, strength: float | None = None, mask: str | Path | None = None,
               mask_blur: int = 0) -> list[Image.Image]:
        """``n`` images per prompt; image k (counted across prompts and repeats) uses seed + k.

        Without ``seed`` a random one is drawn; each image's ``info`` holds its recipe (the PNG
        text chunks ``parameters`` and ``diffgen``), so ``image.save(path, pnginfo=...)`` is not
        needed to keep it: ``diffgen.sampling.images.save_png`` writes it.
        """
        from diffgen.errors import InputError
        from diffgen.sampling.edits import EditSource
        from diffgen.sampling.generate import ImageTask, batches, generate, plan_tasks, recipe
        from diffgen.sampling.images import PARAMETERS_KEY, RECIPE_KEY, a1111_parameters, to_pil
        from diffgen.sampling.prompts import PromptSpec

        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompt_list or any(not isinstance(p, str) or not p.strip() for p in prompt_list):
            raise InputError("give one or more non-empty prompts")
        if n < 1 or batch_size < 1:
            raise InputError("n and batch_size must be at least 1")
        settings = SamplingSettings(steps, sampler, schedule, guidance, negative).validate()
        edit = None
        if init_image is not None:
            edit = EditSource.from_files(Path(init_image), strength, Path(mask) if mask else None, mask_blur)
        elif strength is not None or mask is not None or mask_blur:
            raise InputError("strength, mask and mask_blur need an init_image")
        seed = secrets.randbelow(2**31) if seed is None else seed
        tasks = plan_tasks([PromptSpec(p, n) for p in prompt_list], seed, ImageTask.of(0, "", 0, settings, edit))
        images = []
        for batch in batches(tasks, batch_size):
            for row, (task, image, _) in enumerate(generate(self.diffusion_model, batch, batch_size)):
                picture = to_pil(image[None])[0]
                made = recipe(task, self.diffusion_model, self.name, (len(batch), row))
                picture.info.update({PARAMETERS_KEY: a1111_parameters(made),
                                     RECIPE_KEY: json.dumps(made, sort_keys=True)})
                images.append(picture)
        return images

    def encode(self, prompts: str | Sequence[str]) -> TextEncoding:
        """Per-token states (B, L, D), pooled embeddings (B, E), token ids and counts."""
        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        with torch.inference_mode():
            return self.diffusion_model.text_encoder.encode(prompt_list, weighted=True)


def load(path: str | Path | None = None, device: str = "auto") -> Model:
    """A checkpoint (default: $DIFFGEN_CHECKPOINT, else the embedded default model) on ``device``
    ("auto" picks CUDA, then Apple MPS, then the CPU)."""
    from diffgen.checkpoint import default_checkpoint, load_model
    from diffgen.devices import pick_device

    resolved = Path(path) if path is not None else default_checkpoint()
    name = resolved.stem if path is not None else "default"
    return Model(load_model(resolved, pick_device(device)), name)
