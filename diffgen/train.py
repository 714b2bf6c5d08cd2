"""Training from scratch: stage 1 trains a small CLIP on the folder's image-caption pairs
(open_clip's model and contrastive loss), stage 2 trains the U-Net with the EDM loss against the
frozen text encoder. One loop per stage, EMA, exact resume, DDP under torchrun.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from diffgen import devices, distributed
from diffgen.checkpoint import load_model, save_model
from diffgen.config import Config, config_from_dict, config_to_dict, config_to_toml
from diffgen.data import TrainingSet, load_training_set, scan_folder, split_holdout
from diffgen.denoiser import Denoiser, edm_loss
from diffgen.errors import InputError
from diffgen.model import DiffusionModel, PromptCache, build_model
from diffgen.trainloop import (
    BatchPlan,
    NoiseGenerator,
    PendingLosses,
    RunLog,
    Throughput,
    cosine_lr,
    image_batch,
    lr_at,
    maybe_no_sync,
    pick_captions,
    step_generator,
)
from diffgen.trainstate import (
    TrainingState,
    optimizer_from_tensors,
    optimizer_to_tensors,
    require_state,
    restore_rng,
    rng_tensors,
    save_state,
)


@dataclass
class TrainOptions:
    data: Path
    out: Path
    config: Config
    resume: bool = False
    text_encoder: str | None = None  # a diffgen checkpoint, or "ARCH:PRETRAINED" for open_clip
    device: str = "auto"
    progress: bool = True
    log: Callable[[str], None] = print
    # Stop the diffusion stage once the run has taken this many seconds (saved and resumable).
    time_limit: float | None = None
    # Storage type of the floating-point weights in model.safetensors (the state stays float32).
    weights_dtype: str = "float32"
    # A diffgen checkpoint whose U-Net and text encoder weights the run starts from (fine-tuning).
    init: Path | None = None


@dataclass
class Run:
    """What both stages need: options, data, model, device, process group, log."""

    opts: TrainOptions
    cfg: Config
    data: TrainingSet
    train_idx: list[int]
    held_idx: list[int]
    model: DiffusionModel
    device: torch.device
    dist: distributed.DistInfo
    log: RunLog
    started: float  # time.perf_counter() when run_training began (for --time-limit)

    def plan(self, per_rank: int) -> BatchPlan:
        return BatchPlan(self.train_idx, per_rank, self.cfg.train.grad_accum, self.dist.world_size,
                         self.cfg.train.seed)

    def say(self, message: str) -> None:
        if self.dist.is_main:
            self.opts.log(message)


# Settings a resumed run may change: how long it goes on and how often it saves or samples.
RESUMABLE_CHANGES = ("steps", "sample_every", "checkpoint_every")
# On a GPU the losses are read back every this many steps (see PendingLosses).
GPU_LOG_EVERY = 25
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _without_schedule(config: dict[str, Any]) -> dict[str, Any]:
    train = {k: v for k, v in config["train"].items() if k not in RESUMABLE_CHANGES}
    return {**config, "train": train}


def _resolve_text_encoder(cfg: Config, spec: str | None) -> tuple[Config, DiffusionModel | None]:
    """Apply --text-encoder: a diffgen checkpoint (its text config and weights) or ARCH:PRETRAINED."""
    if not spec:
        return cfg, None
    if spec.endswith(".safetensors") and ":" not in spec:
        source = load_model(spec)  # a missing or bad file is a CheckpointError naming it
        return dataclasses.replace(cfg, text=source.config.text), source
    arch, _, pretrained = spec.partition(":")
    if not pretrained:
        raise InputError(f"--text-encoder {spec}: give a diffgen checkpoint (.safetensors) or "
                         "ARCH:PRETRAINED (an open_clip tag or a local weights file)")
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, arch=arch, pretrained=pretrained)), None


def _load_init(cfg: Config, spec: Path) -> DiffusionModel:
    """The --init checkpoint; its model must have the config's shape (image size, text, U-Net,
    denoiser), while the [train] section stays the run's own."""
    source = load_model(spec)  # a missing or bad file is a CheckpointError naming it
    mine, theirs = config_to_dict(cfg), config_to_dict(source.config)
    differing = sorted(k for k in mine if k != "train" and mine[k] != theirs.get(k))
    if differing:
        raise InputError(f"--init {spec}: the checkpoint was made with another model config "
                         f"(different {', '.join(differing)}); train with its config")
    return source


def _load_text_tower(model: DiffusionModel, source: DiffusionModel, log: Callable[[str], None]) -> None:
    """Copy --text-encoder's CLIP into ``model``. A checkpoint made for another image size has an
    image tower of other shapes: then only the text tower is copied (the U-Net never sees the image
    tower; it serves `diffgen eval`, which then has no trained image features), and the log says so."""
    theirs = source.text_encoder.state_dict()
    mine = model.text_encoder.state_dict()
    differing = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if any(".visual." not in f".{k}" for k in differing):
        raise InputError("--text-encoder: that checkpoint's text tower has other shapes")
    if differing:  # the whole image tower stays fresh, not a mix of copied and fresh layers
        theirs = {k: v for k, v in theirs.items() if ".visual." not in f".{k}"}
    model.text_encoder.load_state_dict(theirs, strict=not differing)
    if differing:
        log(f"--text-encoder: the checkpoint was made for another image size; its text tower is used, "
            f"the CLIP image tower ({len(differing)} tensors of other shapes) stays untrained")


def _progress(run: Run, total: int, start: int, stage: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} img/s"),
                        TimeRemainingColumn(), disable=not (run.opts.progress and run.dist.is_main))
    task = progress.add_task(stage, total=total, completed=start, loss="-", rate="-")
    return progress, task


class StageMeter:
    """Progress bar, metrics.jsonl rows and images/s for one stage, fed in batches of steps."""

    def __init__(self, run: Run, stage: str, total: int, start: int, images_per_step: int):
        self.run, self.stage, self.images_per_step = run, stage, images_per_step
        self.pending = PendingLosses(1 if run.device.type == "cpu" else GPU_LOG_EVERY)
        self.speed = Throughput()
        self.smoothed: float | None = None
        self.progress, self.bar = _progress(run, total, start, stage)

    def add(self, step: int, lr: float, loss: torch.Tensor, force: bool = False) -> None:
        """Record step ``step``'s loss; write out the pending steps when due or ``force``."""
        self.pending.add(step, lr, loss)
        if force or self.pending.due():
            self.flush()

    def flush(self) -> None:
        rows = self.pending.flush(lambda v: distributed.all_reduce_mean(v, self.run.dist))
        if not rows:
            return
        rate = self.speed.add(self.images_per_step * len(rows))
        for step, lr, loss in rows:
            self.smoothed = loss if self.smoothed is None else 0.98 * self.smoothed + 0.02 * loss
            self.run.log.write({"stage": self.stage, "step": step, "loss": loss, "lr": lr,
                                "images_per_s": rate})
        self.progress.update(self.bar, advance=len(rows), loss=f"{self.smoothed:.4f}", rate=f"{rate:.1f}")

    def out_of_time(self) -> bool:
        """True on every rank once the run's time limit has passed (checked at flushes only)."""
        limit = self.run.opts.time_limit
        if limit is None or self.pending.rows:
            return False
        return distributed.any_rank(time.perf_counter() - self.run.started >= limit, self.run.dist,
                                    self.run.device)


def _save(run: Run, stage: str, step: int, tensors: dict, optimizer: torch.optim.Optimizer,
          plan: BatchPlan) -> None:
    if run.dist.is_main:
        opt_tensors, groups = optimizer_to_tensors(optimizer, "optim")
        info = {"config": config_to_dict(run.cfg), "optimizer_groups": groups,
                "data_position": plan.position(step), "num_images": len(run.data)}
        save_state(run.opts.out / "state", TrainingState(stage, step, {**tensors, **opt_tensors,
                                                                       **rng_tensors()}, info))
    distributed.barrier(run.dist)


def train_clip(run: Run, resume: TrainingState | None) -> None:
    """Stage 1: contrastive training of the CLIP text and image towers (Radford et al. 2021)."""
    import open_clip

    t = run.cfg.train
    clip = run.model.text_encoder.clip.train()
    optimizer = torch.optim.AdamW(clip.parameters(), lr=t.clip_lr, weight_decay=t.weight_decay)
    start = 0
    if resume is not None:
        clip.load_state_dict({k[len("clip."):]: v for k, v in resume.tensors.items() if k.startswith("clip.")})
        optimizer_from_tensors(optimizer, resume.tensors, "optim", resume.info["optimizer_groups"])
        restore_rng(resume.tensors)
        start = resume.step
    net = DistributedDataParallel(clip) if run.dist.enabled else clip
    loss_fn = open_clip.loss.ClipLoss(gather_with_grad=True, rank=run.dist.rank,
                                      world_size=run.dist.world_size)
    plan = run.plan(t.clip_batch_size)
    tokenizer = run.model.text_encoder
    token_ids: dict[str, torch.Tensor] = {}

    def tokens_for(captions: list[str]) -> torch.Tensor:
        # Each distinct caption is tokenized once: the Python tokenizer costs more than a GPU step.
        missing = sorted(set(captions) - token_ids.keys())
        if missing:
            token_ids.update(zip(missing, tokenizer.tokenize(missing)[0]))
        return torch.stack([token_ids[c] for c in captions]).to(run.device)

    meter = StageMeter(run, "clip", t.clip_steps, start, plan.global_batch)
    with meter.progress:
        for step in range(start, t.clip_steps):
            lr = cosine_lr(step, t.clip_steps, t.clip_lr, min(t.warmup_steps, t.clip_steps // 10 + 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            total = torch.zeros((), device=run.device)
            for micro in range(t.grad_accum):
                idx = plan.batch(step, micro, run.dist.rank)
                gen = step_generator(t.seed, "clip", step * t.grad_accum + micro, run.dist.rank)
                ids = tokens_for(pick_captions(run.data, idx, gen))
                with maybe_no_sync(net, micro < t.grad_accum - 1):
                    image_features, text_features, scale = net(image_batch(run.data, idx, run.device), ids)[:3]
                    loss = loss_fn(image_features, text_features, scale) / t.grad_accum
                    loss.backward()
                total += loss.detach()
            torch.nn.utils.clip_grad_norm_(clip.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                clip.logit_scale.clamp_(0, 4.6052)  # at most 100, as in CLIP
            save = (step + 1) % t.checkpoint_every == 0 or step + 1 == t.clip_steps
            meter.add(step + 1, lr, total, force=save)
            if save:
                _save(run, "clip", step + 1, {f"clip.{k}": v for k, v in clip.state_dict().items()},
                      optimizer, plan)
    clip.eval()


@torch.no_grad()
def retrieval_accuracy(model: DiffusionModel, data: TrainingSet, indices: list[int],
                       device: torch.device) -> dict[str, Any]:
    """Image-to-text retrieval over ``indices`` (first caption each): top-1/top-5 accuracy and the
    accuracy random ranking would get (higher than 1/N where captions repeat)."""
    clip = model.text_encoder.clip
    captions = [data.captions[i][0] for i in indices]
    image_features = torch.nn.functional.normalize(clip.encode_image(image_batch(data, indices, device)), dim=-1)
    ids = model.text_encoder.tokenize(captions)[0].to(device)
    text_features = torch.nn.functional.normalize(clip.encode_text(ids), dim=-1)
    ranking = (image_features @ text_features.T).argsort(dim=1, descending=True).cpu()
    n = len(captions)
    hits1 = hits5 = chance1 = chance5 = 0.0
    for row, own in enumerate(captions):
        same = sum(c == own for c in captions)
        hits1 += captions[ranking[row, 0]] == own
        hits5 += any(captions[j] == own for j in ranking[row, :5].tolist())
        chance1 += same / n
        miss5 = 1.0  # probability that 5 random picks without replacement all miss
        for k in range(min(5, n)):
            miss5 *= max(0.0, (n - same - k) / (n - k))
        chance5 += 1 - miss5
    return {"images": n, "top1": hits1 / n, "top5": hits5 / n, "chance_top1": chance1 / n,
            "chance_top5": chance5 / n}


def train_diffusion(run: Run, resume: TrainingState | None) -> int:
    """Stage 2: the U-Net with the EDM loss; frozen text encoder; EMA; caption dropout for CFG.
    Returns the number of steps done (fewer than configured when the time limit stopped it)."""
    t, d = run.cfg.train, run.cfg.denoiser
    text = run.model.text_encoder.eval().requires_grad_(False)
    unet = run.model.denoiser.net.train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    # fused: one kernel for the whole update instead of a few per parameter tensor
    optimizer = torch.optim.AdamW(unet.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                  fused=True if run.device.type == "cuda" else None)
    start = 0
    if resume is not None:  # the model weights were restored by run_training
        ema.load_state_dict({k[len("ema."):]: v for k, v in resume.tensors.items() if k.startswith("ema.")})
        optimizer_from_tensors(optimizer, resume.tensors, "optim", resume.info["optimizer_groups"])
        restore_rng(resume.tensors)
        start = resume.step
    net = DistributedDataParallel(unet) if run.dist.enabled else unet
    denoiser = Denoiser(net, d.sigma_data)
    cache = PromptCache(text)
    cache.encode_all(sorted({c for i in run.train_idx for c in run.data.captions[i]} | {""}))
    plan = run.plan(t.batch_size)
    autocast = devices.autocast(run.device, t.precision)
    noise_generator = NoiseGenerator(run.device)
    ema_params, params = list(ema.parameters()), list(unet.parameters())
    meter = StageMeter(run, "diffusion", t.steps, start, plan.global_batch)
    step = start
    with meter.progress:
        for step in range(start, t.steps):
            lr = lr_at(step, t.lr, t.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            total = torch.zeros((), device=run.device)
            for micro in range(t.grad_accum):
                idx = plan.batch(step, micro, run.dist.rank)
                gen = step_generator(t.seed, "diffusion", step * t.grad_accum + micro, run.dist.rank)
                cond = cache(pick_captions(run.data, idx, gen, t.caption_dropout))
                with maybe_no_sync(net, micro < t.grad_accum - 1), autocast:
                    loss = edm_loss(denoiser, image_batch(run.data, idx, run.device), cond,
                                    d.p_mean, d.p_std, generator=noise_generator(gen)).mean() / t.grad_accum
                    loss.backward()
                total += loss.detach()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            decay = min(t.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - decay)
            periodic = (step + 1) % t.sample_every == 0 or (step + 1) % t.checkpoint_every == 0
            meter.add(step + 1, lr, total, force=periodic or step + 1 == t.steps)
            last = step + 1 == t.steps or meter.out_of_time()
            if last and step + 1 < t.steps:
                run.say(f"time limit reached after {step + 1} of {t.steps} steps; "
                        "the state is saved, --resume continues the run")
            if run.dist.is_main and ((step + 1) % t.sample_every == 0 or last):
                sample_grid(run, ema, step + 1)
            if (step + 1) % t.checkpoint_every == 0 or last:
                tensors = {**{f"model.{k}": v for k, v in run.model.state_dict().items()},
                           **{f"ema.{k}": v for k, v in ema.state_dict().items()}}
                _save(run, "diffusion", step + 1, tensors, optimizer, plan)
                run.log.loss_curve(run.opts.out / "loss.png")
            if last:
                break
    run.model.denoiser.net.load_state_dict(ema.state_dict())  # ship the EMA weights
    return step + 1 if start < t.steps else start


def sample_grid(run: Run, ema_unet: torch.nn.Module, step: int) -> Path:
    """A grid at fixed prompts (held-out captions where there are any) and seeds 0..7, with the
    EMA weights, so grids of different steps and runs compare side by side."""
    from diffgen.generate import ImageTask, generate
    from diffgen.images import labelled_grid, save_png, to_pil

    view = DiffusionModel(run.cfg, run.model.text_encoder, Denoiser(ema_unet, run.cfg.denoiser.sigma_data))
    source = run.held_idx or run.train_idx
    prompts = list(dict.fromkeys(run.data.captions[i][0] for i in source))[:8]
    tasks = [ImageTask(index=k, prompt=p, seed=k, steps=20) for k, p in enumerate(prompts)]
    images = torch.stack([image for _, image, _ in generate(view, tasks, batch_size=8)])
    path = run.opts.out / "samples" / f"step-{step:08d}.png"
    recipe = {"step": step, "prompts": prompts, "seeds": list(range(len(prompts))), "steps": 20,
              "sampler": "dpmpp-2m", "guidance": tasks[0].guidance}
    save_png(labelled_grid(to_pil(images), [f"{p} ({k})" for k, p in enumerate(prompts)]), path,
             text={"diffgen-grid": json.dumps(recipe)})
    return path


def run_training(opts: TrainOptions) -> dict[str, Any]:
    """Both stages end to end; returns the training summary (also stored in the checkpoint)."""
    from diffgen.devices import pick_device
    from diffgen.fileio import atomic_write

    started = time.perf_counter()
    if opts.weights_dtype not in WEIGHT_DTYPES:
        raise InputError(f"unknown weights dtype '{opts.weights_dtype}' (choose from: {', '.join(WEIGHT_DTYPES)})")
    if opts.time_limit is not None and opts.time_limit <= 0:
        raise InputError("the time limit must be positive")
    device = pick_device(opts.device)
    dist = distributed.init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    try:
        if opts.init is not None and (opts.text_encoder or opts.resume):
            raise InputError("--init starts a new run from a checkpoint: it cannot be combined with "
                             "--text-encoder or --resume")
        if opts.init is not None:
            cfg, source = opts.config, _load_init(opts.config, opts.init)
        else:
            cfg, source = _resolve_text_encoder(opts.config, opts.text_encoder)
        report = scan_folder(opts.data, cfg.text.context_length, check_tokens=False)
        if dist.is_main:
            for path, reason in report.skipped:
                opts.log(f"skipped {path}: {reason}")
        if not report.items:
            raise InputError(f"no usable image-caption pairs in {opts.data} "
                             f"({len(report.skipped)} file(s) skipped; see `diffgen data check`)")
        state_dir = opts.out / "state"
        resume = None
        if opts.resume:
            resume = require_state(state_dir)
            # through the dataclasses, so that a state written before a config key existed compares
            # with that key's default
            stored = config_to_dict(config_from_dict(resume.info["config"]))
            if _without_schedule(stored) != _without_schedule(config_to_dict(cfg)):
                raise InputError(f"--resume: the state in {state_dir} was made with another config")
            if resume.info.get("num_images") != len(report.items):
                raise InputError(f"--resume: the run was trained on {resume.info.get('num_images')} images, "
                                 f"{opts.data} now has {len(report.items)}; the held-out split would change")
        elif list(state_dir.glob("state-*.json")):
            raise InputError(f"{opts.out} already holds a training run: add --resume to continue it, "
                             "or choose another -o folder")
        data = load_training_set(report.items, cfg.image_size)
        if device.type == "cuda":  # a few hundred MB at most: no host-to-device copy per step
            data.images = data.images.to(device)
            torch.backends.cuda.matmul.allow_tf32 = True  # the CLIP stage runs in float32
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels once
        train_idx, held_idx = split_holdout(len(data), cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        # weights from --text-encoder or the state replace any pretrained download
        model = build_model(cfg, load_pretrained_text=source is None and resume is None).to(device)
        if source is not None and opts.init is not None:
            model.load_state_dict(source.state_dict())  # shapes agree: _resolve_init compared configs
        elif source is not None:
            _load_text_tower(model, source, opts.log if dist.is_main else lambda _: None)
        if resume is not None and resume.stage == "diffusion":
            model.load_state_dict({k[len("model."):]: v for k, v in resume.tensors.items()
                                   if k.startswith("model.")})
        if dist.is_main:
            opts.out.mkdir(parents=True, exist_ok=True)
            atomic_write(opts.out / "config.toml", lambda tmp: Path(tmp).write_text(config_to_toml(cfg)))
        log = RunLog(opts.out, dist.is_main, (resume.stage, resume.step) if resume else None)
        run = Run(opts, cfg, data, train_idx, held_idx, model, device, dist, log, started)
        run.say(f"{len(train_idx)} training images, {len(held_idx)} held out; global batch "
                f"{cfg.train.batch_size * cfg.train.grad_accum * dist.world_size} on {dist.world_size} "
                f"process(es), {device}")
        summary: dict[str, Any] = {}
        if not cfg.text.arch and source is None:
            if resume is None or resume.stage == "clip":
                train_clip(run, resume)
            summary["clip_retrieval"] = retrieval_accuracy(model, data, held_idx or train_idx[:500], device)
            summary["clip_retrieval"]["held_out"] = bool(held_idx)
            r = summary["clip_retrieval"]
            run.say(f"CLIP image-to-text retrieval on {r['images']} {'held-out' if held_idx else 'training'}"
                    f" images: top-1 {r['top1']:.1%} (chance {r['chance_top1']:.1%}), top-5 "
                    f"{r['top5']:.1%} (chance {r['chance_top5']:.1%})")
        steps_done = train_diffusion(run, resume if resume is not None and resume.stage == "diffusion" else None)
        summary.update({
            "images": len(data), "train_images": len(train_idx), "held_out_images": len(held_idx),
            "skipped_files": len(report.skipped), "steps": steps_done, "configured_steps": cfg.train.steps,
            "clip_steps": cfg.train.clip_steps if "clip_retrieval" in summary else 0,
            "world_size": dist.world_size,
            "global_batch_size": cfg.train.batch_size * cfg.train.grad_accum * dist.world_size,
            "final_loss": next((r["loss"] for r in reversed(log.rows) if r["stage"] == "diffusion"), None),
            "ranks_identical": distributed.weights_agree(model.denoiser, dist),
            "device": str(device), "seconds_this_process": round(time.perf_counter() - started, 2),
            **({"init": {"path": str(opts.init), "content_hash": source.content_hash}}
               if opts.init is not None and source is not None else {}),
        })
        if dist.is_main:
            save_model(opts.out / "model.safetensors", model.cpu(), extra={"training": summary},
                       dtype=WEIGHT_DTYPES[opts.weights_dtype])
            atomic_write(opts.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
        distributed.barrier(dist)
        return summary
    finally:
        distributed.shutdown(dist)
