"""The two training stages and the step loop they share.

Stage 1 trains a small CLIP on the folder's image-caption pairs (open_clip's model and contrastive
loss, Radford et al. 2021); stage 2 trains the U-Net with the EDM loss (Karras et al. 2022) against
the text encoder (frozen, or trained with it: training/text_tuning.py), with EMA weights and
caption dropout for classifier-free guidance. Both are a ``Stage``: how to compute one
micro-batch's loss, what to do after each optimizer step, what to save. ``run_stage`` is the one
loop: learning rate, gradient accumulation (DDP syncs on the last micro-batch only), clipping, the
optimizer step, metrics, states at ``checkpoint_every`` and at the end, and the time limit.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from diffgen import distributed
from diffgen.engine.denoiser import Conditioning, Denoiser
from diffgen.engine.model import DiffusionModel, PromptCache
from diffgen.engine.unet import UNet
from diffgen.errors import Terminated
from diffgen.state import (
    EMA_UNET_PREFIX,
    TrainingState,
    optimizer_from_tensors,
    restore_rng,
    with_prefix,
    without_prefix,
)
from diffgen.training.batches import (
    cosine_lr,
    ema_decay_at,
    image_batch,
    lr_at,
    pick_captions,
    step_generator,
)
from diffgen.training.budget import (
    CLIP_EPOCHS,
    CLIP_SHARE,
    PLAN_AT,
    TIMED_FROM,
    decayed_lr,
    ema_decay,
    next_revision,
    planned_steps,
)
from diffgen.training.budget import clip_steps as budget_clip_steps
from diffgen.training.diffusion_loss import DiffusionLoss
from diffgen.training.metrics import StageMeter
from diffgen.training.run import Run, save_run_state
from diffgen.training.text_tuning import TextTuning


@dataclass
class Stage:
    """One stage's parts for ``run_stage``."""

    name: str  # "clip" or "diffusion": names its states, metrics rows and step generators
    steps: int
    batch_size: int  # per process and micro-batch
    net: torch.nn.Module  # what runs forward and backward (DDP-wrapped under torchrun)
    optimizer: torch.optim.Optimizer
    lr: Callable[[int, int], float]  # (step, the stage's step count: planned under a budget) -> lr
    # mean loss of one micro-batch, or (that loss, its named parts, logged beside it in metrics.jsonl)
    loss: Callable[[list[int], torch.Generator], torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]]
    tensors: Callable[[], dict[str, torch.Tensor]]  # the weights a state holds (the optimizer is added)
    after_step: Callable[[int, int], None] = lambda step, total: None  # (step, step count)
    # called with (step, last) at sample_every steps, at states and at the end, before the state is saved
    before_save: Callable[[int, bool], None] = lambda step, last: None
    time_limited: bool = False
    sample_every: int | None = None  # force the metrics out at these steps too (for sample grids)
    params: list[torch.Tensor] = field(default_factory=list)  # clipped to grad_clip
    indices: list[int] | None = None  # the images its batches walk (default: every training image)


def run_stage(run: Run, stage: Stage, start: int) -> int:
    """Steps ``start`` .. ``stage.steps`` (fewer when the time limit stops it, or the budget plans
    fewer: see training/budget.py); returns the steps done and records in ``run.finished`` whether
    the stage ran to its end."""
    t = run.cfg.train
    plan = run.plan(stage.batch_size, stage.indices)
    budget = run.budget
    resumed = run.resume if run.resume is not None and run.resume.stage == stage.name else None
    planned = resumed.info.get("planned_steps") if resumed is not None and budget is not None else None
    revise_at = resumed.info.get("revise_at") if resumed is not None and budget is not None else None
    total = planned or stage.steps
    deadline = budget.deadline(stage.name, run.cfg) if budget is not None else \
        run.started + run.opts.time_limit if stage.time_limited and run.opts.time_limit else None
    meter = StageMeter(stage.name, total, start, plan.global_batch, run.log, run.dist, run.device,
                       run.opts.progress, deadline)
    timed_from, timed_step = time.perf_counter(), start + TIMED_FROM  # the steps a plan is timed on
    step = done = start
    with meter.progress:
        while step < total:
            lr = stage.lr(step, total)
            for group in stage.optimizer.param_groups:  # a group may run at a fraction of the schedule
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_sum = torch.zeros((), device=run.device)
            parts: dict[str, torch.Tensor] = {}
            for micro in range(t.grad_accum):
                idx = plan.batch(step, micro, run.dist.rank)
                gen = step_generator(t.seed, stage.name, step * t.grad_accum + micro, run.dist.rank)
                with distributed.maybe_no_sync(stage.net, micro < t.grad_accum - 1):
                    result = stage.loss(idx, gen)
                    loss, named = result if isinstance(result, tuple) else (result, {})
                    loss = loss / t.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
                for name, value in named.items():
                    parts[name] = parts.get(name, 0) + value.detach() / t.grad_accum
            torch.nn.utils.clip_grad_norm_(stage.params, t.grad_clip)
            stage.optimizer.step()
            stage.optimizer.zero_grad(set_to_none=True)
            stage.after_step(step, total)
            done = step + 1
            if budget is not None and done == timed_step:
                timed_from = time.perf_counter()
            if budget is not None and deadline is not None and (
                    (planned is None and done == start + PLAN_AT) or (done == revise_at and done > timed_step)):
                total = planned = _plan(run, stage, done, timed_from, done - timed_step, deadline,
                                        revised=planned is not None)
                revise_at = next_revision(done, total)  # from the steps after this plan
                timed_from, timed_step = time.perf_counter(), done
                meter.retotal(total)
            save_due = done % t.checkpoint_every == 0
            sample_due = stage.sample_every is not None and done % stage.sample_every == 0
            meter.add(done, lr, loss_sum, parts, force=save_due or sample_due or done == total)
            terminated = run.stop.is_set() if not run.dist.enabled else \
                distributed.any_rank(run.stop.is_set(), run.dist, run.device)
            if terminated:  # SIGTERM: keep this step's work, then end like Ctrl-C
                meter.flush()
                save_run_state(run, stage.name, done, stage.tensors(), stage.optimizer, plan,
                               _plan_info(planned, revise_at))
                run.say(f"terminated after step {done}; the state is saved, --resume continues the run")
                raise Terminated()
            last = done == total or meter.out_of_time()
            if last and done < total and budget is not None:
                run.say(f"{stage.name}: its share of the budget ended after {done} of {total} steps")
            elif last and done < total:
                run.say(f"time limit reached after {done} of {total} steps; "
                        "the state is saved, --resume continues the run")
            if sample_due or save_due or last:
                stage.before_save(done, last)
            if save_due or last:
                save_run_state(run, stage.name, done, stage.tensors(), stage.optimizer, plan,
                               _plan_info(planned, revise_at))
                run.log.loss_curve(run.opts.out / "loss.png")
            if last:
                break
            step = done
    run.finished[stage.name], run.steps_done[stage.name] = done >= total, done
    return done


def _plan(run: Run, stage: Stage, done: int, timed_from: float, timed_steps: int, deadline: float,
          revised: bool = False) -> int:
    """The stage's step count under the budget, from the time its ``timed_steps`` steps since
    ``timed_from`` took (the mean over processes, so that every one plans the same)."""
    now = time.perf_counter()
    timing = torch.tensor([(now - timed_from) / max(1, timed_steps), deadline - now], device=run.device)
    per_step, left = distributed.all_reduce_mean(timing, run.dist).tolist()
    total = planned_steps(done, stage.steps, per_step, left)
    run.say(f"{stage.name}: {per_step:.2f} s a step, {left / 60:.1f} min left of its budget: "
            f"{total} steps {'now ' if revised else ''}planned (configured: {stage.steps})")
    return total


def _plan_info(planned: int | None, revise_at: int | None) -> dict[str, int]:
    """What a state keeps of a budgeted stage's plan, so that a resumed stage follows it."""
    return {**({"planned_steps": planned} if planned else {}), **({"revise_at": revise_at} if revise_at else {})}


def resumed_at(resume: TrainingState | None, optimizer: torch.optim.Optimizer,
               weights: dict[str, torch.nn.Module] | None = None) -> int:
    """The step a stage starts at: 0 for a new stage; for a resumed one its state's step, with
    ``weights`` (modules by their prefix in the state, e.g. the EMA), the optimizer's moments and
    the random generators restored. (The model's own weights were restored when the run was
    prepared.)"""
    if resume is None:
        return 0
    for prefix, module in (weights or {}).items():
        module.load_state_dict(without_prefix(resume.tensors, prefix))
    optimizer_from_tensors(optimizer, resume.tensors, "optim", resume.info["optimizer_groups"])
    restore_rng(resume.tensors)
    return resume.step


def main_lr(run: Run, base_lr: float) -> Callable[[int, int], float]:
    """The learning rate of a stage's step: warm-up then constant (EDM's schedule; the EMA does the
    averaging), or under a budget warm-up, constant and a decay that ends with the planned steps."""
    warmup = run.cfg.train.warmup_steps
    if run.budget is not None:
        return lambda step, total: decayed_lr(step, total, base_lr, warmup)
    return lambda step, total: lr_at(step, base_lr, warmup)


def ema_decay_of(run: Run, step: int, total: int) -> float:
    """The EMA decay after ``step`` (ramped up at the start; under a budget at most as long as a
    tenth of the planned steps)."""
    t = run.cfg.train
    return ema_decay_at(step, ema_decay(t.ema_decay, total) if run.budget is not None else t.ema_decay, t.ema_warmup)


def train_clip(run: Run, resume: TrainingState | None) -> None:
    """Stage 1: contrastive training of the CLIP text and image towers."""
    import open_clip

    t = run.cfg.train
    clip = run.model.text_encoder.clip.train()
    optimizer = torch.optim.AdamW(clip.parameters(), lr=t.clip_lr, weight_decay=t.weight_decay)
    start = resumed_at(resume, optimizer, {"clip": clip})
    net = distributed.wrapped(clip, run.dist)
    loss_fn = open_clip.loss.ClipLoss(gather_with_grad=True, rank=run.dist.rank, world_size=run.dist.world_size)
    tokenizer = run.model.text_encoder
    token_ids: dict[str, torch.Tensor] = {}

    def tokens_for(captions: list[str]) -> torch.Tensor:
        # Each distinct caption is tokenized once: the Python tokenizer costs more than a GPU step.
        missing = sorted(set(captions) - token_ids.keys())
        if missing:
            token_ids.update(zip(missing, tokenizer.tokenize(missing)[0]))
        return torch.stack([token_ids[c] for c in captions]).to(run.device)

    def loss(idx: list[int], gen: torch.Generator) -> torch.Tensor:
        ids = tokens_for(pick_captions(run.data, idx, gen))
        image_features, text_features, scale = net(image_batch(run.data, idx, run.device), ids)[:3]
        return loss_fn(image_features, text_features, scale)

    def clamp_temperature(step: int, total: int) -> None:
        with torch.no_grad():
            clip.logit_scale.clamp_(0, 4.6052)  # at most 100, as in CLIP

    steps = t.clip_steps
    if run.budget is not None:
        steps = budget_clip_steps(t.clip_steps, len(run.train_idx), t.clip_batch_size)
        captions = len({c for i in run.train_idx for c in run.data.captions[i]})
        run.say(f"CLIP stage: {captions} distinct caption(s) over {len(run.train_idx)} images"
                + (" (class labels: a batch holds each many times)" if captions < t.clip_batch_size else "")
                + f"; at most {steps} steps ({CLIP_EPOCHS} passes) and {CLIP_SHARE:.0%} of the budget")
    warmup = min(t.warmup_steps, steps // 10 + 1)
    run_stage(run, Stage("clip", steps, t.clip_batch_size, net, optimizer,
                         lambda step, total: cosine_lr(step, total, t.clip_lr, warmup), loss,
                         lambda: with_prefix(clip.state_dict(), "clip"), after_step=clamp_temperature,
                         params=list(clip.parameters())), start)
    clip.eval()


def train_diffusion(run: Run, resume: TrainingState | None) -> int:
    """Stage 2: the U-Net with the EDM loss; EMA; caption dropout for CFG. The text encoder is
    frozen, or trained too at ``train.text_lr_scale`` (training/text_tuning.py).
    Returns the number of steps done (fewer than configured when the time limit stopped it)."""
    t = run.cfg.train
    text = run.model.text_encoder.eval().requires_grad_(False)
    tuning = TextTuning(text, t.text_lr_scale, run.device, run.dist) if t.text_lr_scale > 0 else None
    unet = cast(UNet, run.model.denoiser.net).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    groups = [{"params": list(unet.parameters())}] + ([tuning.param_group()] if tuning else [])
    # fused: one kernel for the whole update instead of a few per parameter tensor
    optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay,
                                  fused=True if run.device.type == "cuda" else None)
    start = resumed_at(resume, optimizer, {EMA_UNET_PREFIX: ema})
    if resume is not None and tuning:
        tuning.load(resume.tensors)
    net = distributed.wrapped(unet, run.dist)
    encode: Callable[[list[str]], Conditioning]
    if tuning is None:  # a frozen encoder: each distinct caption encoded once, up front
        cache = encode = PromptCache(text)
        negatives = {n for i in run.train_idx for n in run.data.negatives_of(i)} if t.negative_weight else set()
        cache.encode_all(sorted({c for i in run.train_idx for c in run.data.captions[i]} | {""} | negatives))
    else:  # a trained one: encoded in every step, with gradients
        encode = tuning
    loss = DiffusionLoss(run, unet, Denoiser.from_config(net, run.cfg), encode)
    ema_params: list[torch.Tensor] = list(ema.parameters())
    params: list[torch.Tensor] = list(unet.parameters())

    def update_ema(step: int, total: int) -> None:
        decay = ema_decay_of(run, step, total)
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        if tuning:
            tuning.update_ema(decay)

    def tensors() -> dict[str, torch.Tensor]:
        return {**with_prefix(run.model.state_dict(), "model"), **with_prefix(ema.state_dict(), EMA_UNET_PREFIX),
                **(tuning.tensors() if tuning else {})}

    def grid(step: int, last: bool) -> None:
        if run.dist.is_main and (step % t.sample_every == 0 or last):
            with tuning.averaged() if tuning else contextlib.nullcontext():
                sample_grid(run, ema, step)

    steps_done = run_stage(run, Stage("diffusion", t.steps, t.batch_size, net, optimizer,
                                      main_lr(run, t.lr), loss, tensors,
                                      after_step=update_ema, before_save=grid, time_limited=True,
                                      sample_every=t.sample_every,
                                      params=params + (list(tuning.params.values()) if tuning else [])), start)
    run.model.denoiser.net.load_state_dict(ema.state_dict())  # ship the EMA weights
    if tuning:
        tuning.ship()
    return steps_done


def sample_grid(run: Run, ema_unet: torch.nn.Module, step: int) -> Path:
    """A grid at fixed prompts (held-out captions where there are any) and seeds 0..7, with the
    EMA weights and the default sampling settings, so grids of different steps and runs compare
    side by side."""
    from diffgen.sampling.generate import ImageTask, generate
    from diffgen.sampling.images import labelled_grid, save_png, to_pil
    from diffgen.sampling.settings import DEFAULT_BATCH_SIZE, DEFAULTS

    view = DiffusionModel(run.cfg, run.model.text_encoder, Denoiser.from_config(ema_unet, run.cfg))
    source = run.held_idx or run.train_idx
    prompts = list(dict.fromkeys(run.data.captions[i][0] for i in source))[:8]
    tasks = [ImageTask.of(k, p, k, DEFAULTS) for k, p in enumerate(prompts)]
    images = torch.stack([image for _, image, _ in generate(view, tasks, batch_size=DEFAULT_BATCH_SIZE)])
    path = run.opts.out / "samples" / f"step-{step:08d}.png"
    recipe = {"step": step, "prompts": prompts, "seeds": list(range(len(prompts))), "steps": DEFAULTS.steps,
              "sampler": DEFAULTS.sampler, "guidance": DEFAULTS.guidance}
    save_png(labelled_grid(to_pil(images), [f"{p} ({k})" for k, p in enumerate(prompts)]), path,
             text={"diffgen-grid": json.dumps(recipe)})
    return path
