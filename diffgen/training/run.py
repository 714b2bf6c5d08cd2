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
from diffgen.checkpoint import load_model, save_model
from diffgen.config import Config, config_from_dict, config_to_dict, config_to_toml
from diffgen.data import TrainingSet, load_images_2x, load_training_set, scan_folder, split_fingerprint, split_holdout
from diffgen.engine.model import DiffusionModel, build_model
from diffgen.errors import InputError
from diffgen.state import TrainingState, optimizer_to_tensors, require_state, rng_tensors, save_state, without_prefix
from diffgen.training.batches import BatchPlan
from diffgen.training.metrics import RunLog

# Settings a resumed run may change: how long it goes on and how often it saves or samples.
RESUMABLE_CHANGES = ("steps", "layout_steps", "upscale_steps", "sample_every", "checkpoint_every")
# [upscale] keys that only say how the upscaler samples (training never reads them): a resumed run
# may set them to what its measurements chose, and the model it writes carries them.
UPSCALE_SAMPLING_KEYS = ("steps", "sigma_min", "sigma_max", "aug_sigma")
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

    @property
    def cfg(self) -> Config:
        return self.opts.config

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


def attention_levels(cfg: Config) -> list[int]:
    """The U-Net levels (0 = full resolution) that hold a transformer block."""
    return [level for level in range(len(cfg.unet.channel_mult))
            if cfg.image_size // 2**level in cfg.unet.attention_resolutions]


# [denoiser] keys that only say how training draws its noise levels, not what the model computes.
TRAINING_ONLY_DENOISER_KEYS = ("p_mean", "p_std", "high_noise_share", "high_noise_min_sigma")


def model_differences(cfg: Config, source: Config) -> list[str]:
    """The config sections (and top-level keys) other than [train] in which the two models differ;
    the training noise distribution (denoiser.p_mean, p_std, high_noise_*) may differ."""
    mine, theirs = config_to_dict(cfg), config_to_dict(source)
    for d in (mine, theirs):
        for key in TRAINING_ONLY_DENOISER_KEYS:
            d.get("denoiser", {}).pop(key, None)
    return sorted(k for k in mine if k != "train" and mine[k] != theirs.get(k))


def grows_from(cfg: Config, source: Config) -> bool:
    """True when every weight of ``source``'s model has its place in ``cfg``'s and whatever ``cfg``
    adds starts as the identity, so that a run from ``source`` starts as ``source``'s function.
    ``cfg`` may differ in the image size (the U-Net is convolutional and its transformer blocks take
    any number of positions: the attention levels must match, e.g. [16, 8] at 32 px is [32, 16] at
    64 px), add transformer blocks at more levels (their output projection starts at zero), turn
    on ``unet.position_embedding`` and add ``unet.text_mixer_layers`` (their output projections start
    at zero), add a layout predictor or an upscaler (each trained by its own stage) or leave it out;
    all else must be the same."""
    if any(k not in ("image_size", "unet", "layout", "upscale") for k in model_differences(cfg, source)):
        return False
    if cfg.layout != source.layout and source.layout.width and cfg.layout.width:
        return False
    if cfg.upscale != source.upscale and source.upscale.base_channels and cfg.upscale.base_channels:
        return False

    def layers(c: Config) -> dict:
        return {k: v for k, v in config_to_dict(c)["unet"].items()
                if k not in ("attention_resolutions", "position_embedding", "text_mixer_layers")}

    return (layers(cfg) == layers(source) and set(attention_levels(source)) <= set(attention_levels(cfg))
            and cfg.unet.position_embedding >= source.unet.position_embedding
            and cfg.unet.text_mixer_layers >= source.unet.text_mixer_layers)


def _load_init(cfg: Config, spec: Path) -> DiffusionModel:
    """The --init checkpoint; its model must have the config's shape (image size, text, U-Net,
    denoiser), or be one that the config grows (``grows_from``), while the [train] section stays
    the run's own."""
    source = load_model(spec)  # a missing or bad file is a CheckpointError naming it
    differing = model_differences(cfg, source.config)
    if differing and not grows_from(cfg, source.config):
        raise InputError(f"--init {spec}: the checkpoint was made with another model config "
                         f"(different {', '.join(differing)}); train with its config, or one that only "
                         "changes the image size (with attention at the same levels), adds attention "
                         "levels, turns on unet.position_embedding, adds unet.text_mixer_layers or a layout predictor "
                         "(the training noise distribution, denoiser.p_mean, p_std and high_noise_*, may differ)")
    return source


def _load_init_weights(model: DiffusionModel, source: DiffusionModel, say: Callable[[str], None]) -> None:
    """Copy the --init model's weights (``_load_init`` checked that ``model`` grows it). At another
    image size only the denoiser and the text tower carry over; layers the source lacks keep their
    initialisation, which makes them the identity."""
    other_size = source.config.image_size != model.config.image_size
    target = model.denoiser if other_size else model
    weights = (source.denoiser if other_size else source).state_dict()
    if model.layout is None and source.layout is not None:
        say("--init: the config has no [layout]: the checkpoint's layout predictor is left out")
        weights = {k: v for k, v in weights.items() if not k.startswith("layout.")}
    if model.upscaler is None and source.upscaler is not None:
        say("--init: the config has no [upscale]: the checkpoint's upscaler is left out")
        weights = {k: v for k, v in weights.items() if not k.startswith("upscaler.")}
    missing, unexpected = target.load_state_dict(weights, strict=False)
    grown = (".pos_proj.", ".attn.", ".text_mixer.", ".layout.", ".upscaler.")
    if unexpected or any(all(part not in f".{k}" for part in grown) for k in missing):
        raise RuntimeError(f"--init: weights that do not fit: {unexpected or missing}")  # _load_init prevents it
    if other_size:
        _load_text_tower(model, source, say, "--init")
        say(f"--init: the model was trained at {source.config.image_size} px; its U-Net continues at "
            f"{model.config.image_size} px")
    added = [f"transformer blocks at {model.config.image_size // 2**level} px"
             for level in sorted(set(attention_levels(model.config)) - set(attention_levels(source.config)))]
    if model.config.unet.position_embedding and not source.config.unet.position_embedding:
        added.append("the position embedding")
    new_mixers = model.config.unet.text_mixer_layers - source.config.unet.text_mixer_layers
    if new_mixers:
        added.append(f"{new_mixers} text mixer layer{'s' if new_mixers > 1 else ''}")
    if model.layout is not None and source.layout is None:
        say("--init: the checkpoint has no layout predictor; the run's layout stage trains a new one")
    if model.upscaler is not None and source.upscaler is None:
        say("--init: the checkpoint has no upscaler; the run's upscaling stage trains a new one")
    if added:
        grown_tensors = sum(not k.startswith(("layout.", "upscaler.")) for k in missing)
        say(f"--init: {' and '.join(added)} added ({grown_tensors} tensors), starting as the identity")


def _load_text_tower(model: DiffusionModel, source: DiffusionModel, say: Callable[[str], None],
                     flag: str = "--text-encoder") -> None:
    """Copy --text-encoder's CLIP into ``model``. A checkpoint made for another image size has an
    image tower of other shapes: then only the text tower is copied (the U-Net never sees the image
    tower; it serves `diffgen eval`, which then has no trained image features), and the user is told."""
    theirs = source.text_encoder.state_dict()
    mine = model.text_encoder.state_dict()
    differing = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if any(".visual." not in f".{k}" for k in differing):
        raise InputError(f"{flag}: that checkpoint's text tower has other shapes")
    if differing:  # the whole image tower stays fresh, not a mix of copied and fresh layers
        theirs = {k: v for k, v in theirs.items() if ".visual." not in f".{k}"}
    model.text_encoder.load_state_dict(theirs, strict=not differing)
    if differing:
        say(f"{flag}: the checkpoint was made for another image size; its text tower is used, "
            f"the CLIP image tower ({len(differing)} tensors of other shapes) stays untrained")


def _check_resume(state_dir: Path, cfg: Config, num_images: int, data: Path,
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
    from diffgen.fileio import atomic_write, folder_lock, remove_stale_temporaries

    if opts.init is not None and (opts.text_encoder or opts.resume):
        raise InputError("--init starts a new run from a checkpoint: it cannot be combined with "
                         "--text-encoder or --resume")
    if opts.init is not None:
        cfg, source = opts.config, _load_init(opts.config, opts.init)
    else:
        cfg, source = _resolve_text_encoder(opts.config, opts.text_encoder)
    opts = dataclasses.replace(opts, config=cfg)
    report = scan_folder(opts.data, cfg.text.context_length, check_tokens=False)
    if dist.is_main:
        for path, reason in report.skipped:
            opts.say(f"skipped {path}: {reason}")
    if not report.items:
        raise InputError(f"no usable image-caption pairs in {opts.data} "
                         f"({len(report.skipped)} file(s) skipped; see `diffgen data check`)")
    state_dir = opts.out / "state"
    resume = None
    if opts.resume:
        resume = _check_resume(state_dir, cfg, len(report.items), opts.data,
                               opts.say if dist.is_main else lambda _: None)
    elif list(state_dir.glob("state-*.json")):
        raise InputError(f"{opts.out} already holds a training run: add --resume to continue it, "
                         "or choose another -o folder")
    data = load_training_set(report.items, cfg.image_size)
    if cfg.train.upscale_steps:
        small = load_images_2x(data, report.items, report.sizes, cfg.image_size)
        if small and dist.is_main:
            opts.say(f"upscaling stage: {len(small)} image(s) smaller than {2 * cfg.image_size} px left out "
                     f"(e.g. {small[0].path})")
    if device.type == "cuda":  # a few hundred MB at most: no host-to-device copy per step
        data.images = data.images.to(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # the CLIP stage runs in float32
        torch.backends.cudnn.allow_tf32 = True
        # the shapes repeat (with train.negative_weight the batch grows by 0..batch_size contrast
        # rows, a few dozen shapes): pick the fastest conv kernels once per shape
        torch.backends.cudnn.benchmark = True
    train_idx, held_idx = split_holdout(len(data), cfg.train.seed)
    if cfg.train.negative_weight and not any(data.negatives_of(i) for i in train_idx):
        raise InputError(f"train.negative_weight is {cfg.train.negative_weight:g} but no training image "
                         "has negative captions (metadata.jsonl \"negative_text\"; `diffgen data emoji` "
                         "writes them since this version: rebuild older folders); set it to 0 or add them")
    if cfg.train.grounding_weight and not any(data.regions and data.regions[i] for i in train_idx):
        raise InputError(f"train.grounding_weight is {cfg.train.grounding_weight:g} but no training image "
                         "has object regions (metadata.jsonl \"regions\"; `diffgen data emoji` writes "
                         "them since this version: rebuild older folders); set it to 0 or add them")
    if cfg.train.layout_bias and cfg.train.steps and not any(data.regions and data.regions[i] for i in train_idx):
        raise InputError(f"train.layout_bias is {cfg.train.layout_bias:g} but no training image has object "
                         "regions (metadata.jsonl \"regions\"; `diffgen data emoji` writes them): the bias "
                         "is built from them; set it to 0 or add them")
    if cfg.train.layout_steps and not (data.regions and any(data.regions[i] for i in train_idx)):
        raise InputError(f"train.layout_steps is {cfg.train.layout_steps} but no training image has object "
                         "regions (metadata.jsonl \"regions\"; `diffgen data emoji` writes them): the layout "
                         "predictor learns from them; set it to 0 or add them")
    if cfg.train.upscale_steps and not set(data.indices_2x) & set(train_idx):
        raise InputError(f"train.upscale_steps is {cfg.train.upscale_steps} but no training image is at least "
                         f"{2 * cfg.image_size} px on its shorter side (twice image_size): the upscaler learns "
                         "from them (`diffgen data emoji --size` renders larger scenes); set it to 0 or add them")
    if not cfg.train.steps and opts.init is None and resume is None:
        raise InputError("train.steps is 0: without --init there is no U-Net to keep; give --init CHECKPOINT "
                         "or a number of steps")
    torch.manual_seed(cfg.train.seed)
    # weights from --text-encoder, --init or the state replace any pretrained download
    model = build_model(cfg, load_pretrained_text=source is None and resume is None).to(device)
    if source is not None and opts.init is not None:
        _load_init_weights(model, source, opts.say if dist.is_main else lambda _: None)
    elif source is not None:
        _load_text_tower(model, source, opts.say if dist.is_main else lambda _: None)
    if resume is not None and resume.stage in ("diffusion", "layout", "upscale"):

        model.load_state_dict(without_prefix(resume.tensors, "model"))
    if dist.is_main:  # from here on the run writes into its folder: hold it until the run ends
        stack.enter_context(folder_lock(opts.out, "training run"))
        for folder in (opts.out, state_dir, opts.out / "samples"):
            for stale in remove_stale_temporaries(folder):
                opts.say(f"removed {stale}, left by an interrupted run")
        atomic_write(opts.out / "config.toml", lambda tmp: Path(tmp).write_text(config_to_toml(cfg)))
    log = RunLog(opts.out, dist.is_main, (resume.stage, resume.step) if resume else None)
    init = resume.info.get("init") if resume is not None else None
    if opts.init is not None and source is not None:
        init = {"path": str(opts.init), "content_hash": source.content_hash}
    return Run(opts, data, train_idx, held_idx, model, device, dist, log, started, resume, init,
               len(report.skipped))


def save_run_state(run: Run, stage: str, step: int, tensors: dict[str, torch.Tensor],
                   optimizer: torch.optim.Optimizer, plan: BatchPlan) -> None:
    """The training state after ``step`` (main process; every rank waits for it)."""
    if run.dist.is_main:
        opt_tensors, groups = optimizer_to_tensors(optimizer, "optim")
        info = {"config": config_to_dict(run.cfg), "optimizer_groups": groups,
                "data_position": plan.position(step), "num_images": len(run.data),
                **({"init": run.init} if run.init else {})}
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
        "clip_steps": cfg.train.clip_steps if "clip_retrieval" in summary else 0,
        "world_size": dist.world_size,
        "global_batch_size": cfg.train.batch_size * cfg.train.grad_accum * dist.world_size,
        "final_loss": next((r["loss"] for r in reversed(run.log.rows) if r["stage"] == "diffusion"), None),
        "ranks_identical": distributed.weights_agree(run.model, dist),
        "device": str(run.device), "seconds_this_process": round(time.perf_counter() - run.started, 2),
        **({"init": run.init} if run.init else {}),
    })
    if dist.is_main:
        name = run.opts.name or run.opts.out.resolve().name
        save_model(run.opts.out / "model.safetensors", run.model.cpu(), extra={"training": summary, "name": name},
                   dtype=WEIGHT_DTYPES[run.opts.weights_dtype])
        atomic_write(run.opts.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    distributed.barrier(dist)
    return summary
