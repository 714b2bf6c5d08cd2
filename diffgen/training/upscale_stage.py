"""Stage 4: the upscaler (engine/upscaler.py) learns the folder's images at twice the model's size
from their base images, on random crops (it is convolutional, so crops teach it what whole images
need, at a fraction of the cost). It runs last and touches nothing else: with ``--init`` and
``train.steps = 0`` it adds an upscaler to a trained model.

Like the other stages it keeps an EMA of the weights (shipped), saves ``state-upscale-N`` states
and resumes exactly: each step's crops, augmentation levels and noise come from the step's
generator.
"""

from __future__ import annotations

import copy

import torch

from diffgen import distributed
from diffgen.engine.pixels import from_uint8
from diffgen.state import EMA_UPSCALER_PREFIX, TrainingState, with_prefix
from diffgen.training.run import Run
from diffgen.training.stages import Stage, ema_decay_of, main_lr, resumed_at, run_stage


def random_crops(images: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """One ``crop`` x ``crop`` window per image of (B, C, S, S), at even offsets (so a crop's
    2 x 2 blocks are the whole image's), drawn from ``generator``: (B, C, crop, crop)."""
    side = images.shape[-1]
    slots = (side - crop) // 2 + 1
    offsets = (torch.randint(slots, (images.shape[0], 2), generator=generator) * 2).tolist()
    return torch.stack([image[:, y:y + crop, x:x + crop] for image, (y, x) in zip(images, offsets)])


def train_upscale(run: Run, resume: TrainingState | None) -> int:
    """The upscaling stage from its start or from ``resume``; returns the steps done."""
    t, cfg = run.cfg.train, run.cfg.upscale
    upscaler = run.model.upscaler
    assert upscaler is not None and run.data.images_2x is not None, "prepare_run checks the config and data"
    upscaler.train().requires_grad_(True)
    ema = copy.deepcopy(upscaler).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(upscaler.parameters(), lr=t.upscale_lr, weight_decay=t.weight_decay)
    start = resumed_at(resume, optimizer, {EMA_UPSCALER_PREFIX: ema})
    net = distributed.wrapped(upscaler, run.dist)
    positions = {index: row for row, index in enumerate(run.data.indices_2x)}
    usable = [i for i in run.train_idx if i in positions]  # prepare_run checked there are some
    params: list[torch.Tensor] = list(upscaler.parameters())
    ema_params: list[torch.Tensor] = list(ema.parameters())
    images_2x = run.data.images_2x

    def loss(idx: list[int], gen: torch.Generator) -> torch.Tensor:
        high = random_crops(images_2x[[positions[i] for i in idx]], cfg.crop, gen)
        # through the DDP wrapper's forward, so that the gradients are averaged across processes
        return upscaler.loss(from_uint8(high.to(run.device)), gen, forward=net).mean()

    def update_ema(step: int, total: int) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - ema_decay_of(run, step, total))

    def tensors() -> dict[str, torch.Tensor]:
        return {**with_prefix(run.model.state_dict(), "model"), **with_prefix(ema.state_dict(), EMA_UPSCALER_PREFIX)}

    done = run_stage(run, Stage("upscale", t.upscale_steps, t.upscale_batch_size, net, optimizer,
                                main_lr(run, t.upscale_lr), loss, tensors,
                                after_step=update_ema, time_limited=True, params=params, indices=usable), start)
    upscaler.load_state_dict(ema.state_dict())  # ship the EMA weights
    upscaler.eval().requires_grad_(False)
    return done

