"""`diffgen train --distill`: a few-step student distilled from a frozen model (guided consistency
distillation, engine/consistency.py).

The teacher (``--init``, else the default model) stays frozen; the student starts as its U-Net
(the guidance embedding at zero) and learns, on the folder's images and captions, to map each
point of the teacher's guided ODE to the trajectory's end in one forward, for guidance scales
drawn from [guidance_min, guidance_max]. The run goes through the shared step loop
(``stages.run_stage``): states, exact resume, SIGTERM, ``--time-limit`` and ``--budget``, metrics
and the loss curve are those of every stage. It writes ``RUN/student.safetensors`` (diffgen/
students.py; the shipped average of the student) at every state and at the end, with a grid of
fast samples in ``RUN/samples/``; the teacher's own file is never touched.

Where the teacher has a trained layout predictor, sampling lays out prompts that name two or more
objects with the layout bias (engine/layout_bias.py), so the student meets the bias when sampling:
images whose caption names two objects with regions are then distilled with the same bias on the
teacher's conditional rows and on the student's, at sampling's default strength.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffgen import devices
from diffgen.checkpoint import default_checkpoint, load_model
from diffgen.config import TrainConfig
from diffgen.engine.consistency import (
    SOLVERS,
    AttachedStudent,
    Student,
    consistency_loss,
    distillation_grid,
    guided_denoiser,
    student_denoiser,
)
from diffgen.engine.denoiser import Conditioning
from diffgen.engine.layout_bias import attention_biased
from diffgen.engine.regions import TokenSpans
from diffgen.errors import InputError
from diffgen.sampling.layout import DEFAULT_LAYOUT_STRENGTH
from diffgen.state import require_state, with_prefix
from diffgen.students import save_student
from diffgen.training.batches import NoiseGenerator, image_batch, pick_captions
from diffgen.training.diffusion_loss import layout_bias_of
from diffgen.training.metrics import RunLog
from diffgen.training.run import (
    WEIGHT_DTYPES,
    Run,
    TrainOptions,
    check_resume,
    hold_run_folder,
    load_data,
    one_process_start,
    scan_data,
)
from diffgen.training.stages import Stage, ema_decay_of, main_lr, resumed_at, run_stage

DEFAULT_STEPS = 4000
DEFAULT_BATCH = 8
CHECKPOINT_EVERY = 50  # a CPU step takes seconds: a state (and a student file) every few minutes
STUDENT_FILE = "student.safetensors"


@dataclass(frozen=True)
class DistillOptions:
    """The distillation's settings (recorded in every state and in the student file): the teacher's
    grid of ``levels`` ODE steps (Karras, ``rho``) and the step between a pair (``skip`` levels,
    ``solver``), the guidance range, the target network's average, the learning rate and the layout
    bias (None: sampling's default strength where the teacher has a trained layout predictor)."""

    levels: int = 20
    skip: int = 1
    solver: str = "heun"
    guidance_min: float = 1.0
    guidance_max: float = 6.0
    rho: float = 7.0
    target_decay: float = 0.95
    lr: float = 1e-4
    warmup_steps: int = 20
    layout_bias: float | None = None

    def check(self) -> None:
        if not 1 <= self.skip <= self.levels <= 1000:
            raise InputError(f"distillation: need 1 <= skip <= levels <= 1000, got skip {self.skip}, "
                             f"levels {self.levels}")
        if self.solver not in SOLVERS:
            raise InputError(f"distillation: solver must be one of {', '.join(SOLVERS)}, got '{self.solver}'")
        if not 0 <= self.guidance_min <= self.guidance_max:
            raise InputError("distillation: need 0 <= guidance_min <= guidance_max")
        if not 0 <= self.target_decay < 1 or self.lr <= 0 or self.rho <= 0:
            raise InputError("distillation: target_decay must be in [0, 1), lr and rho positive")

    def settings(self, layout_bias: float) -> dict[str, Any]:
        """What states and the student file record (``rho`` sets the sampling levels)."""
        return {**dataclasses.asdict(self), "layout_bias": layout_bias}


def train_distill(opts: TrainOptions, distill: DistillOptions = DistillOptions()) -> dict[str, Any]:
    """The distillation run end to end on one process; returns its summary."""
    distill.check()
    if opts.text_encoder is not None:
        raise InputError("--distill trains a student of a frozen --init model: --text-encoder does not apply")
    started, device, dist = one_process_start(opts, "--distill")
    from diffgen.training import _stop_on_sigterm

    with contextlib.ExitStack() as stack:
        run, layout_bias = _prepare(opts, distill, device, dist, started, stack)
        stack.enter_context(_stop_on_sigterm(run))  # SIGTERM: the state after this step, then the end
        return _train(run, distill, layout_bias)


def _prepare(opts: TrainOptions, distill: DistillOptions, device: torch.device, dist: Any, started: float,
             stack: contextlib.ExitStack) -> tuple[Run, float]:
    """The teacher, the config and the data, checked; then the run folder held."""
    say = opts.say
    state = None
    if opts.resume:
        if opts.init is not None:
            raise InputError("--resume continues with the run's own teacher: drop --init")
        state = require_state(opts.out / "state", say)
        if state.stage != "distill":
            raise InputError(f"--resume: {opts.out} holds another kind of training run, not a distillation")
        teacher_path = Path((state.info.get("init") or {}).get("path", ""))
    else:
        teacher_path = (opts.init or default_checkpoint()).resolve()
    teacher = load_model(teacher_path, device, image_tower=False)
    if state is not None and teacher.content_hash != (state.info.get("init") or {}).get("content_hash"):
        raise InputError(f"--resume: the teacher {teacher_path} has changed since the run began")
    has_layouts = teacher.layout is not None and int(teacher.layout.trained_steps) > 0
    layout_bias = distill.layout_bias if distill.layout_bias is not None else \
        DEFAULT_LAYOUT_STRENGTH if has_layouts else 0.0
    if state is not None and state.info.get("distill") != distill.settings(layout_bias):
        raise InputError(f"--resume: the run was started with other distillation settings "
                         f"({state.info.get('distill')})")
    t = opts.config.train
    # the teacher's own [train] section is not used: its signals and stages are not this run's
    cfg = dataclasses.replace(teacher.config, train=TrainConfig(
        seed=t.seed, steps=t.steps, batch_size=t.batch_size, lr=distill.lr, warmup_steps=distill.warmup_steps,
        weight_decay=0.0, ema_decay=t.ema_decay, checkpoint_every=CHECKPOINT_EVERY, sample_every=CHECKPOINT_EVERY,
        precision=t.precision))
    opts = dataclasses.replace(opts, config=cfg)
    if not opts.resume and list((opts.out / "state").glob("state-*.json")):
        raise InputError(f"{opts.out} already holds a training run: add --resume to continue it, "
                         "or choose another -o folder")
    report = scan_data(opts.data, cfg, say)
    resume = check_resume(opts.out / "state", cfg, len(report.items), opts.data, say) if opts.resume else None
    data, train_idx, held_idx = load_data(cfg, report, device, say)
    hold_run_folder(opts.out, cfg, stack, say)
    log = RunLog(opts.out, True, (resume.stage, resume.step) if resume else None)
    init = {"path": str(teacher_path), "content_hash": teacher.content_hash or ""}
    run = Run(opts, data, train_idx, held_idx, teacher, device, dist, log, started, resume, init,
              len(report.skipped))
    return run, layout_bias


def _train(run: Run, distill: DistillOptions, layout_bias: float) -> dict[str, Any]:
    cfg, device, model = run.cfg, run.device, run.model
    teacher, text = model.denoiser, model.text_encoder
    torch.manual_seed(cfg.train.seed)  # the guidance embedding's first layer
    student = Student.of_teacher(teacher).to(device).train().requires_grad_(True)
    target = copy.deepcopy(student).eval().requires_grad_(False)  # the loss's target network
    shipped = copy.deepcopy(student).eval().requires_grad_(False)  # the average the run ships
    settings = distill.settings(layout_bias)
    run.say(f"distilling {run.init['path'] if run.init else 'the model'} into a {distill.levels}-level consistency "
            f"student ({sum(p.numel() for p in student.parameters()):,} parameters) on {len(run.train_idx)} images; "
            f"guidance {distill.guidance_min:g}-{distill.guidance_max:g}, {distill.solver} teacher steps"
            + (f", layout bias {layout_bias:g}" if layout_bias else ""))
    optimizer = torch.optim.AdamW(student.parameters(), lr=distill.lr, weight_decay=0.0,
                                  fused=True if device.type == "cuda" else None)
    start = resumed_at(run.resume, optimizer, {"student": student, "target": target, "ema_student": shipped})
    grid = distillation_grid(distill.levels, teacher.sigma_min, teacher.sigma_max, distill.rho)
    with torch.no_grad():
        empty = text.encode([""])  # guidance's unconditional branch, encoded once
    uncond = Conditioning(empty.tokens, empty.pooled)
    spans = TokenSpans(text.tokenizer, text.context_length) if layout_bias else None
    nets = [teacher.net, student.net, target.net]
    autocast = devices.autocast(device, cfg.train.precision)  # bf16 where the hardware has the units
    noise_generator = NoiseGenerator(device)
    pairs = distill.levels - distill.skip + 1  # the grid's (high, low) pairs a step draws from

    def loss(idx: list[int], gen: torch.Generator) -> torch.Tensor:
        x0 = image_batch(run.data, idx, device)
        captions = pick_captions(run.data, idx, gen)  # no caption dropout: w's uncond branch is ""
        w = (distill.guidance_min + (distill.guidance_max - distill.guidance_min)
             * torch.rand(len(idx), generator=gen)).to(device)
        n = torch.randint(pairs, (len(idx),), generator=gen)
        high, low = grid[n].float().to(device), grid[n + distill.skip].float().to(device)
        noise_gen = noise_generator(gen)
        noise = torch.randn(x0.shape, generator=noise_gen, device=noise_gen.device).to(device)
        with torch.no_grad():
            encoding = text.encode(captions)
        cond = Conditioning(encoding.tokens, encoding.pooled)
        bias = layout_bias_of(run.data, idx, captions, spans, layout_bias, device) if spans is not None else None
        with contextlib.ExitStack() as biased, autocast:
            if bias is not None:  # the same bias in all three: the teacher's conditional rows, all of the others'
                for net in nets:
                    biased.enter_context(attention_biased(net, bias))
            losses = consistency_loss(student_denoiser(student, cond, w), student_denoiser(target, cond, w),
                                      guided_denoiser(teacher, cond, uncond, w), x0, noise, high, low,
                                      distill.solver)
        return losses.mean()

    params: list[torch.Tensor] = list(student.parameters())
    target_params: list[torch.Tensor] = list(target.parameters())
    shipped_params: list[torch.Tensor] = list(shipped.parameters())

    def update_averages(step: int, total: int) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(target_params, params, 1 - distill.target_decay)
            torch._foreach_lerp_(shipped_params, params, 1 - ema_decay_of(run, step, total))

    def tensors() -> dict[str, torch.Tensor]:
        return {**with_prefix(student.state_dict(), "student"), **with_prefix(target.state_dict(), "target"),
                **with_prefix(shipped.state_dict(), "ema_student")}

    def write(step: int, last: bool) -> None:
        if not last:  # the last one is written after the loop, which a resumed finished run skips
            _write_student(run, shipped, settings, step)
        _student_grid(run, shipped, distill.rho, step)

    run.state_info["distill"] = settings
    done = run_stage(run, Stage("distill", cfg.train.steps, cfg.train.batch_size, student, optimizer,
                                main_lr(run, distill.lr), loss, tensors, after_step=update_averages,
                                before_save=write, time_limited=True, sample_every=CHECKPOINT_EVERY,
                                params=params), start)
    path = _write_student(run, shipped, settings, done)
    final = next((r["loss"] for r in reversed(run.log.rows) if r["stage"] == "distill"), None)
    summary = {"student": str(path), "steps": done, "configured_steps": cfg.train.steps,
               "finished": run.finished.get("distill", done >= cfg.train.steps), "final_loss": final,
               "bytes": path.stat().st_size, "base_model_hash": model.content_hash or "", "settings": settings,
               "seconds_this_process": round(time.perf_counter() - run.started, 2), "init": run.init}
    from diffgen.fileio import atomic_write

    atomic_write(run.opts.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    return summary


def _write_student(run: Run, shipped: Student, settings: dict[str, Any], step: int) -> Path:
    """RUN/student.safetensors: the shipped average after ``step`` steps."""
    t = run.cfg.train
    recipe = {"steps": step, "batch_size": t.batch_size, "lr": t.lr, "seed": t.seed, "precision": t.precision,
              "images": len(run.train_idx), "data": str(run.opts.data), "teacher": run.init}
    path = run.opts.out / STUDENT_FILE
    save_student(path, shipped, run.model.content_hash or "", settings, recipe,
                 run.opts.name or run.opts.out.resolve().name, WEIGHT_DTYPES[run.opts.weights_dtype])
    return path


def _student_grid(run: Run, shipped: Student, rho: float, step: int) -> Path:
    """Fast samples (the default step count and guidance) of held-out captions, seeds 0..7, in
    RUN/samples/, so that grids of different steps compare side by side."""
    from diffgen.sampling.generate import ImageTask, generate
    from diffgen.sampling.images import labelled_grid, save_png, to_pil
    from diffgen.sampling.settings import DEFAULTS, FAST_STEPS

    source = run.held_idx or run.train_idx
    prompts = list(dict.fromkeys(run.data.captions[i][0] for i in source))[:8]
    tasks = [ImageTask(k, p, k, steps=FAST_STEPS, guidance=DEFAULTS.guidance, upscale=False, fast=True)
             for k, p in enumerate(prompts)]
    run.model.student = AttachedStudent(shipped, rho, "student", "")
    try:
        images = torch.stack([image for _, image, _ in generate(run.model, tasks, batch_size=len(tasks))])
    finally:
        run.model.student = None
    path = run.opts.out / "samples" / f"step-{step:08d}.png"
    save_png(labelled_grid(to_pil(images), [f"{p} ({k})" for k, p in enumerate(prompts)]), path,
             text={"diffgen-grid": json.dumps({"step": step, "prompts": prompts, "steps": FAST_STEPS, "fast": True})})
    return path
