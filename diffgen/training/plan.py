"""``diffgen train --plan``: what a run would do and how long each stage would take, before it starts.

The folder is scanned as training would scan it, the model is built from the config, and a few
training steps of each stage are timed on this machine with the folder's own images (nothing is
written): the estimate is the stage's steps times the measured seconds a step. Under ``--budget``
the stages' shares and the CLIP stage's data-sized steps are shown instead of the configured ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from diffgen.config import Config
from diffgen.data import load_training_set, scan_folder, split_holdout
from diffgen.engine.denoiser import Denoiser, denoising_loss, noised
from diffgen.engine.model import DiffusionModel, PromptCache, build_model
from diffgen.engine.pixels import from_uint8
from diffgen.errors import InputError
from diffgen.training import budget as budgets
from diffgen.training.run import TrainOptions

TIMED_STEPS = 3  # after one untimed step (allocation, caches)


def plan_lines(opts: TrainOptions, device: torch.device) -> list[str]:
    """The plan of the run ``opts`` describes, as lines for the user."""
    cfg, t = opts.config, opts.config.train
    report = scan_folder(opts.data, cfg.text.context_length, check_tokens=False)
    if not report.items:
        raise InputError(f"no usable image-caption pairs in {opts.data} "
                         f"({len(report.skipped)} file(s) skipped; see `diffgen data check`)")
    data = load_training_set(report.items, cfg.image_size)
    train_idx, held_idx = split_holdout(len(data), t.seed)
    captions = sorted({c for i in train_idx for c in data.captions[i]})
    torch.manual_seed(t.seed)
    model = build_model(cfg, load_pretrained_text=False).to(device)
    unet_params = sum(p.numel() for p in model.denoiser.parameters())
    text_params = sum(p.numel() for p in model.text_encoder.parameters())
    lines = [f"data: {len(train_idx)} training images, {len(held_idx)} held out, {len(captions)} distinct "
             f"caption(s){' (class labels)' if len(captions) < t.clip_batch_size else ''}; images at "
             f"{cfg.image_size} px",
             f"model: U-Net {unet_params / 1e6:.2f} M parameters, CLIP {text_params / 1e6:.2f} M; device {device}"]
    clip_steps = t.clip_steps if not (cfg.text.arch or opts.text_encoder or opts.init) else 0
    if opts.budget is not None and clip_steps:
        clip_steps = budgets.clip_steps(clip_steps, len(train_idx), t.clip_batch_size)
    stages = [("clip", clip_steps, lambda: _clip_step(model, data, train_idx, captions, cfg, device)),
              ("diffusion", t.steps, lambda: _diffusion_step(model, data, train_idx, captions, cfg, device))]
    total = 0.0  # seconds: the timed stages without a budget, the time used so far with one
    for name, steps, step in stages:
        if not steps:
            lines.append(f"{name}: skipped")
            continue
        seconds = _seconds_a_step(step)
        if opts.budget is None:
            lines.append(f"{name}: {steps:,} steps at {seconds:.2f} s a step = {steps * seconds / 60:.1f} min")
            total += steps * seconds
            continue
        share = budgets.Budget(opts.budget, 0.0).deadline(name, cfg) - (0.0 if name == "clip" else total)
        planned = min(steps, int(share * budgets.PLAN_SAFETY / seconds))
        lines.append(f"{name}: up to {share / 60:.1f} min of the budget at {seconds:.2f} s a step = about "
                     f"{planned:,} steps (configured {steps:,})")
        total += planned * seconds
    for name, steps in (("layout", t.layout_steps), ("upscale", t.upscale_steps)):
        if steps:
            lines.append(f"{name}: {steps:,} steps (not timed here)")
    if opts.budget is not None:
        lines.append(f"whole run: {opts.budget / 60:g} min (the budget)")
    else:
        lines.append(f"whole run: about {total / 60:.1f} min for the timed stages"
                     + (f"; --time-limit ends the diffusion stage at {opts.time_limit / 60:g} min"
                        if opts.time_limit else ""))
    return lines


def _seconds_a_step(step: Callable[[], None]) -> float:
    step()
    started = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    return (time.perf_counter() - started) / TIMED_STEPS


def _batch(data, indices: list[int], size: int, device: torch.device) -> torch.Tensor:
    chosen = [indices[k % len(indices)] for k in range(size)]
    return from_uint8(data.images[chosen].to(device))


def _clip_step(model: DiffusionModel, data, indices: list[int], captions: list[str], cfg: Config,
               device: torch.device) -> None:
    """One CLIP training step's work (forward, contrastive loss, backward) on a batch of the data."""
    import open_clip

    clip = model.text_encoder.clip.train()
    size = cfg.train.clip_batch_size
    ids = model.text_encoder.tokenize([captions[k % len(captions)] for k in range(size)])[0].to(device)
    image_features, text_features, scale = clip(_batch(data, indices, size, device), ids)[:3]
    open_clip.loss.ClipLoss()(image_features, text_features, scale).backward()
    clip.zero_grad(set_to_none=True)


def _diffusion_step(model: DiffusionModel, data, indices: list[int], captions: list[str], cfg: Config,
                    device: torch.device) -> None:
    """One diffusion training step's work (denoising loss, backward) on a batch of the data."""
    from diffgen import devices

    size = cfg.train.batch_size
    unet = model.denoiser.net.train()
    x0 = _batch(data, indices, size, device)
    noisy, sigma = noised(x0, cfg.denoiser.p_mean, cfg.denoiser.p_std)
    with torch.no_grad():
        cond = PromptCache(model.text_encoder.eval())([captions[k % len(captions)] for k in range(size)])
    with devices.autocast(device, cfg.train.precision):
        loss = denoising_loss(Denoiser.from_config(unet, cfg), noisy, sigma, x0, cond).mean()
    loss.backward()
    unet.zero_grad(set_to_none=True)
