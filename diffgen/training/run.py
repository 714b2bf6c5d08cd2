"""A training run: its options, preparing it (config, data, model, resume checks), its states, and
finishing it (the summary and model.safetensors)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffgen import distributed
from diffgen.checkpoint import save_model
from diffgen.config import Config, config_from_dict, config_to_dict, config_to_toml
from diffgen.data import (
    DataReport,
    TrainingSet,
    load_images_2x,
    load_training_set,
    scan_folder,
    split_fingerprint,
    split_holdout,
)
from diffgen.engine.model import DiffusionModel, build_model
from diffgen.errors import InputError
from diffgen.state import TrainingState, optimizer_to_tensors, require_state, rng_tensors, save_state, without_prefix
from diffgen.training.batches import BatchPlan
from diffgen.training.budget import Budget
from diffgen.training.data_needs import check_data_needs
from diffgen.training.metrics import RunLog
from diffgen.training.starting_weights import load_init, load_init_weights, load_text_tower, resolve_text_encoder

# Settings a resumed run may change: how long it goes on and how often it saves or samples.
RESUMABLE_CHANGES = ("steps", "layout_steps", "upscale_steps", "sample_every", "checkpoint_every")
# [upscale] keys that only say how the upscaler samples (training never reads them): a resumed run
# may set them to what its measurements chose, and the model it writes carries them.
UPSCALE_SAMPLING_KEYS = ("steps", "sigma_min", "sigma_max", "aug_sigma")
MAX_DATA_WARNINGS = 20  # a folder's metadata warnings printed before training; data check lists all
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class TrainOptions:
    data: Path
    out: Path
    config: Config
    resume: bool = False
    text_encoder: str | None = None  # a diffgen checkpoint, or "ARCH:PRETRAINED" for open_clip
    device: str = "auto"
    progress: bool = True
    say: Callable[[str], None] = print  # one-line messages for the user (the main process only)
    # Stop the diffusion stage once the run has taken this many seconds (saved and resumable).
    time_limit: float | None = None
    # Seconds for the whole run, shared by its stages, each planning its length to end in time
    # (training/budget.py).
    budget: float | None = None
    # Storage type of the floating-point weights in model.safetensors (the state stays float32).
    weights_dtype: str = "float32"
    # A diffgen checkpoint whose U-Net and text encoder weights the run starts from (fine-tuning).
    init: Path | None = None
    # The model's name in image metadata (default: the run folder's name).
    name: str | None = None


@dataclass
class Run:
    """What both stages need. ``opts.config`` is the run's config, resolved once (a
    --text-encoder checkpoint brings its own text config)."""

    opts: TrainOptions
    data: TrainingSet
    train_idx: list[int]
    held_idx: list[int]
    model: DiffusionModel
    device: torch.device
    dist: distributed.DistInfo
    log: RunLog  # metrics.jsonl and the loss curve
    started: float  # time.perf_counter() when the run began (for --time-limit)
    resume: TrainingState | None
    init: dict[str, str] | None = None  # the --init checkpoint (path, content hash), kept across --resume
    skipped_files: int = 0  # data files named and skipped by the scan
    # set by SIGTERM: the step loop saves the state after the current step and ends the run
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished: dict[str, bool] = dataclasses.field(default_factory=dict)  # by stage: ran to its end
    steps_done: dict[str, int] = dataclasses.field(default_factory=dict)  # by stage, in this process
    state_info: dict[str, Any] = dataclasses.field(default_factory=dict)  # more JSON for every state (adapters)

    @property
    def budget(self) -> Budget | None:
        return Budget(self.opts.budget, self.started) if self.opts.budget is not None else None

    @property
    def cfg(self) -> Config:
        return self.opts.config

    @property
    def global_batch(self) -> int:
        """Images per optimizer step of the diffusion stage, over every process."""
        return self.plan(self.cfg.train.batch_size).global_batch

    def plan(self, per_rank: int, indices: list[int] | None = None) -> BatchPlan:
        """The batch plan over ``indices`` (default: every training image)."""
        return BatchPlan(self.train_idx if indices is None else indices, per_rank, self.cfg.train.grad_accum,
                         self.dist.world_size, self.cfg.train.seed)

    def say(self, message: str) -> None:
        if self.dist.is_main:
            self.opts.say(message)


def _without_schedule(config: dict[str, Any]) -> dict[str, Any]:
    train = {k: v for k, v in config["train"].items() if k not in RESUMABLE_CHANGES}
    upscale = {k: v for k, v in config["upscale"].items() if k not in UPSCALE_SAMPLING_KEYS}
    return {**config, "train": train, "upscale": upscale}


def one_process_start(opts: TrainOptions, flag: str) -> tuple[float, torch.device, distributed.DistInfo]:
    """The start time, device and process info of a run on a frozen model (``flag``: --adapter,
    --distill), which trains in one process: under torchrun it is refused."""
    from diffgen.devices import pick_device

    started = time.perf_counter()
    device = pick_device(opts.device)
    dist = distributed.torchrun_env()
    if dist.enabled:
        raise InputError(f"{flag} trains in one process: run it without torchrun")
    return started, device, dist


def check_resume(state_dir: Path, cfg: Config, num_images: int, data: Path,
                  say: Callable[[str], None]) -> TrainingState:
    resume = require_state(state_dir, say)
    # through the dataclasses, so that a state written before a config key existed compares with
    # that key's default
    stored = config_to_dict(config_from_dict(resume.info["config"]))
    if _without_schedule(stored) != _without_schedule(config_to_dict(cfg)):
        raise InputError(f"--resume: the state in {state_dir} was made with another config")
    if resume.info.get("num_images") != num_images:
        raise InputError(f"--resume: the run was trained on {resume.info.get('num_images')} images, "
                         f"{data} now has {num_images}; the held-out split would change")
    return resume


def prepare_run(opts: TrainOptions, device: torch.device, dist: distributed.DistInfo, started: float,
                stack: contextlib.ExitStack) -> Run:
    """Resolve the config, scan and load the data, check a resume, build the model with its
    starting weights; then lock the run folder (held until ``stack`` closes) and write config.toml."""
    say = opts.say if dist.is_main else (lambda _: None)
    if opts.init is not None and (opts.text_encoder or opts.resume):
        raise InputError("--init starts a new run from a checkpoint: it cannot be combined with "
                         "--text-encoder or --resume")
    source: DiffusionModel | None
    if opts.init is not None:
        cfg, source = opts.config, load_init(opts.config, opts.init)
    else:
        cfg, source = resolve_text_encoder(opts.config, opts.text_encoder)
    opts = dataclasses.replace(opts, config=cfg)
    report = scan_data(opts.data, cfg, say)
    resume = _resume_of(opts, len(report.items), say)
    data, train_idx, held_idx = load_data(cfg, report, device, say)
    if not cfg.train.steps and opts.init is None and resume is None:
        raise InputError("train.steps is 0: without --init there is no U-Net to keep; give --init CHECKPOINT "
                         "or a number of steps")
    model = _starting_model(cfg, source, opts.init is not None, resume, device, say)
    if dist.is_main:  # from here on the run writes into its folder: hold it until the run ends
        hold_run_folder(opts.out, cfg, stack, say)
    log = RunLog(opts.out, dist.is_main, (resume.stage, resume.step) if resume else None)
    init = resume.info.get("init") if resume is not None else None
    if opts.init is not None and source is not None:
        init = {"path": str(opts.init), "content_hash": source.content_hash}
    return Run(opts, data, train_idx, held_idx, model, device, dist, log, started, resume, init,
               len(report.skipped))


def scan_data(data: Path, cfg: Config, say: Callable[[str], None]) -> DataReport:
    """The folder scanned as every training run scans it: skipped files and metadata warnings
    said, a folder without one usable pair refused."""
    report = scan_folder(data, cfg.text.context_length, check_tokens=False)
    for path, reason in report.skipped:
        say(f"skipped {path}: {reason}")
    for warning in report.warnings[:MAX_DATA_WARNINGS]:  # what `diffgen data check` says of the metadata
        say(f"warning: {warning}")
    if len(report.warnings) > MAX_DATA_WARNINGS:
        say(f"... and {len(report.warnings) - MAX_DATA_WARNINGS} more warnings (`diffgen data check` lists them)")
    if not report.items:
        raise InputError(f"no usable image-caption pairs in {data} "
                         f"({len(report.skipped)} file(s) skipped; see `diffgen data check`)")
    return report


def _resume_of(opts: TrainOptions, num_images: int, say: Callable[[str], None]) -> TrainingState | None:
    """The state ``--resume`` continues (checked against the config and data); None for a new run,
    which a folder that already holds one refuses."""
    state_dir = opts.out / "state"
    if opts.resume:
        return check_resume(state_dir, opts.config, num_images, opts.data, say)
    if list(state_dir.glob("state-*.json")):
        raise InputError(f"{opts.out} already holds a training run: add --resume to continue it, "
                         "or choose another -o folder")
    return None


def load_data(cfg: Config, report: DataReport, device: torch.device, say: Callable[[str], None]
               ) -> tuple[TrainingSet, list[int], list[int]]:
    """The folder's images at the model's size (and at twice it for the upscaling stage), on the
    GPU where there is one; the held-out split; what the settings need from it checked."""
    data = load_training_set(report.items, cfg.image_size)
    if cfg.train.upscale_steps:
        small = load_images_2x(data, report.items, report.sizes, cfg.image_size)
        if small:
            say(f"upscaling stage: {len(small)} image(s) smaller than {2 * cfg.image_size} px left out "
                f"(e.g. {small[0].path})")
    if device.type == "cuda":  # a few hundred MB at most: no host-to-device copy per step
        data.images = data.images.to(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # the CLIP stage runs in float32
        torch.backends.cudnn.allow_tf32 = True
        # the shapes repeat (with train.negative_weight the batch grows by 0..batch_size contrast
        # rows, a few dozen shapes): pick the fastest conv kernels once per shape
        torch.backends.cudnn.benchmark = True
    train_idx, held_idx = split_holdout(len(data), cfg.train.seed)
    check_data_needs(cfg, data, train_idx)
    return data, train_idx, held_idx


def _starting_model(cfg: Config, source: DiffusionModel | None, from_init: bool, resume: TrainingState | None,
                    device: torch.device, say: Callable[[str], None]) -> DiffusionModel:
    """The model built from the config, its weights from --init, --text-encoder or the resumed
    state (any of which replaces a pretrained download)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, load_pretrained_text=source is None and resume is None).to(device)
    if source is not None and from_init:
        load_init_weights(model, source, say)
    elif source is not None:
        load_text_tower(model, source, say)
    if resume is not None and resume.stage in ("diffusion", "layout", "upscale"):
        model.load_state_dict(without_prefix(resume.tensors, "model"))
    return model


def hold_run_folder(out: Path, cfg: Config, stack: contextlib.ExitStack, say: Callable[[str], None]) -> None:
    """Lock the run folder until ``stack`` closes, remove what an interrupted run left half-written,
    write config.toml."""
    from diffgen.fileio import atomic_write, folder_lock, remove_stale_temporaries

    stack.enter_context(folder_lock(out, "training run"))
    for folder in (out, out / "state", out / "samples"):
        for stale in remove_stale_temporaries(folder):
            say(f"removed {stale}, left by an interrupted run")
    atomic_write(out / "config.toml", lambda tmp: Path(tmp).write_text(config_to_toml(cfg)))


def save_run_state(run: Run, stage: str, step: int, tensors: dict[str, torch.Tensor],
                   optimizer: torch.optim.Optimizer, plan: BatchPlan, plan_info: dict[str, int] | None = None
                   ) -> None:
    """The training state after ``step`` (main process; every rank waits for it); ``plan_info``,
    a budgeted stage's plan (training/budget.py)."""
    if run.dist.is_main:
        opt_tensors, groups = optimizer_to_tensors(optimizer, "optim")
        info = {"config": config_to_dict(run.cfg), "optimizer_groups": groups,
                "data_position": plan.position(step), "num_images": len(run.data),
                **({"init": run.init} if run.init else {}), **run.state_info, **(plan_info or {})}
        save_state(run.opts.out / "state", TrainingState(stage, step, {**tensors, **opt_tensors, **rng_tensors()},
                                                         info))
    distributed.barrier(run.dist)


def finish_run(run: Run, summary: dict[str, Any], steps_done: int) -> dict[str, Any]:
    """Complete the summary and write model.safetensors and summary.json (main process)."""
    from diffgen.fileio import atomic_write

    cfg, dist = run.cfg, run.dist
    summary.update({
        "images": len(run.data), "train_images": len(run.train_idx), "held_out_images": len(run.held_idx),
        "skipped_files": run.skipped_files, "steps": steps_done,
        "held_out_split": split_fingerprint(run.opts.data, run.data.paths, run.held_idx),
        "configured_steps": cfg.train.steps,
        "clip_steps": run.steps_done.get("clip", cfg.train.clip_steps) if "clip_retrieval" in summary else 0,
        "world_size": dist.world_size,
        "global_batch_size": run.global_batch,
        "final_loss": next((r["loss"] for r in reversed(run.log.rows) if r["stage"] == "diffusion"), None),
        "ranks_identical": distributed.weights_agree(run.model, dist),
        "device": str(run.device), "seconds_this_process": round(time.perf_counter() - run.started, 2),
        **({"budget_seconds": run.opts.budget} if run.opts.budget is not None else {}),
        **({"init": run.init} if run.init else {}),
    })
    if dist.is_main:
        name = run.opts.name or run.opts.out.resolve().name
        save_model(run.opts.out / "model.safetensors", run.model.cpu(), extra={"training": summary, "name": name},
                   dtype=WEIGHT_DTYPES[run.opts.weights_dtype])
        atomic_write(run.opts.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    distributed.barrier(dist)
    return summary
