"""Training from scratch or from a checkpoint: ``run_training(TrainOptions(...))``.

Stage 1 trains a small CLIP on the folder's image-caption pairs, stage 2 the U-Net against the
frozen text encoder (training/stages.py), stage 3, where the config has one, the layout predictor
(training/layout_stage.py), stage 4, where it has one, the upscaler (training/upscale_stage.py); a
run is prepared and finished in training/run.py;
batches, seeds and learning rates are in training/batches.py, metrics and the progress bar in
training/metrics.py, the state files in state.py. Resume is exact and DDP runs under
torchrun.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any

import torch

from diffgen.training.run import WEIGHT_DTYPES, Run, TrainOptions, finish_run, prepare_run

__all__ = ["TrainOptions", "run_training"]


def run_training(opts: TrainOptions) -> dict[str, Any]:
    """The stages end to end; returns the training summary (also stored in the checkpoint)."""
    from diffgen import distributed
    from diffgen.devices import pick_device
    from diffgen.errors import InputError

    started = time.perf_counter()
    if opts.weights_dtype not in WEIGHT_DTYPES:
        raise InputError(f"unknown weights dtype '{opts.weights_dtype}' (choose from: {', '.join(WEIGHT_DTYPES)})")
    if opts.time_limit is not None and opts.time_limit <= 0:
        raise InputError("the time limit must be positive")
    if opts.budget is not None and (opts.budget <= 0 or opts.time_limit is not None):
        raise InputError("the budget must be positive, and it replaces the time limit (give one of them)")
    device = pick_device(opts.device)
    dist = distributed.init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    try:
        with contextlib.ExitStack() as stack:
            run = prepare_run(opts, device, dist, started, stack)
            stack.enter_context(_stop_on_sigterm(run))
            return _train(run)
    finally:
        distributed.shutdown(dist)


@contextlib.contextmanager
def _stop_on_sigterm(run: Run):
    """While training, a first SIGTERM asks the step loop to save the state and end after the
    current step (a few seconds); a second one ends the run at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from diffgen.errors import Terminated

    def handler(signum, frame):
        if run.stop.is_set():
            raise Terminated()
        run.stop.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(run: Run) -> dict[str, Any]:
    """The CLIP stage (unless the text encoder comes from elsewhere), the diffusion stage (unless
    train.steps is 0: the --init U-Net as it is), the layout stage (where train.layout_steps), then
    the upscaling stage (where train.upscale_steps)."""
    from diffgen.training.layout_stage import train_layout
    from diffgen.training.metrics import retrieval_accuracy
    from diffgen.training.stages import train_clip, train_diffusion
    from diffgen.training.upscale_stage import train_upscale

    opts, dist, device = run.opts, run.dist, run.device
    run.say(f"{len(run.train_idx)} training images, {len(run.held_idx)} held out; global batch "
            f"{run.global_batch} on {dist.world_size} "
            f"process(es), {device}")
    resume = run.resume
    summary: dict[str, Any] = {}
    # a run started with --init (resumed or not) took its text tower from the checkpoint
    trains_clip = not run.cfg.text.arch and not opts.text_encoder and run.init is None
    if trains_clip:
        if resume is None or resume.stage == "clip":
            train_clip(run, resume)
        held = run.held_idx or run.train_idx[:500]
        summary["clip_retrieval"] = {**retrieval_accuracy(run.model, run.data, held, device),
                                     "held_out": bool(run.held_idx)}
        r = summary["clip_retrieval"]
        run.say(f"CLIP image-to-text retrieval on {r['images']} {'held-out' if run.held_idx else 'training'}"
                f" images: top-1 {r['top1']:.1%} (chance {r['chance_top1']:.1%}), top-5 "
                f"{r['top5']:.1%} (chance {r['chance_top5']:.1%})")
    steps_done = 0
    later = resume is not None and resume.stage in ("layout", "upscale")
    if later:
        steps_done = run.cfg.train.steps  # the later stages start once the U-Net's steps are done
    elif run.cfg.train.steps:
        steps_done = train_diffusion(run, resume if resume is not None and resume.stage == "diffusion" else None)
    # the time limit stopped the U-Net: --resume goes on with it (a budget keeps the later stages their share)
    if run.finished.get("diffusion") is False and run.budget is None:
        return finish_run(run, summary, steps_done)
    if run.cfg.train.layout_steps and not (resume is not None and resume.stage == "upscale"):
        done = train_layout(run, resume if resume is not None and resume.stage == "layout" else None)
        summary["layout_steps"] = done
        if run.finished.get("layout") is False and run.budget is None:
            return finish_run(run, summary, steps_done)
    if run.cfg.train.upscale_steps:
        summary["upscale_steps"] = train_upscale(run, resume if resume is not None and resume.stage == "upscale"
                                                 else None)
    return finish_run(run, summary, steps_done)
