"""`diffgen train`: the CLIP stage and the diffusion stage on a captioned folder (torchrun for DDP)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from diffgen.cli.app import app
from diffgen.cli.common import DebugOption, ThreadsOption, check_output_dir, user_errors
from diffgen.cli.data import print_data_report
from diffgen.errors import InputError


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Folder of images with .txt captions or metadata.jsonl.")],
    out: Annotated[Optional[Path], typer.Option(
        "-o", "--out", help="Run folder (default: runs/<data folder name>).", show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option(
        "--config", help="A preset name (tiny, default, cpu64, cpu32, gpu64; see `diffgen config show`) or a "
        "TOML file. Default: chosen for the folder and the machine (image size from the data, a narrow "
        "U-Net on a CPU); with --init or --text-encoder, the built-in default.", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Diffusion training steps (overrides the config); 0 with "
                                                 "--init keeps its U-Net (to train only the layout predictor).",
                                                 show_default=False)] = None,
    clip_steps: Annotated[Optional[int], typer.Option(help="CLIP training steps (overrides the config).",
                                                      show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Per-process batch size (overrides the config).",
                                                      show_default=False)] = None,
    text_encoder: Annotated[Optional[str], typer.Option(
        help="Use this text encoder instead of training one: a diffgen checkpoint, or ARCH:PRETRAINED "
        "for open_clip (a tag or a local .safetensors file).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in the -o folder from its last state.")] = False,
    init: Annotated[Optional[Path], typer.Option(
        help="Start from this diffgen checkpoint's weights (U-Net and text encoder; the CLIP stage is "
        "skipped): fine-tuning, or more training for a released model. --config must match its model "
        "(or grow it); its [train] section and the noise distribution (denoiser.p_mean, p_std, "
        "high_noise_share, high_noise_min_sigma) may differ.",
        show_default=False)] = None,
    time_limit: Annotated[Optional[float], typer.Option(
        help="Minutes: end the diffusion stage once the run has taken this long, saving the state "
        "and the model (--resume goes on to --steps).", show_default=False)] = None,
    budget: Annotated[Optional[float], typer.Option(
        help="Minutes for the whole run: the stages share them (CLIP at most 15%, sized by the data), "
        "and each plans its steps, learning-rate decay and EMA to end in time. Replaces --time-limit.",
        show_default=False)] = None,
    weights_dtype: Annotated[str, typer.Option(
        help="Storage type of model.safetensors: float32, float16 (half the size) or bfloat16.")] = "float32",
    name: Annotated[Optional[str], typer.Option(
        help="The model's name in image metadata (default: the run folder's name).", show_default=False)] = None,
    adapter: Annotated[Optional[str], typer.Option(
        help="Teach a frozen model (--init, default: the default model) a new word instead of training a "
        "model: lora (the U-Net's attention), embedding (the word's input vectors) or both; writes "
        "RUN/adapter.safetensors (docs/ADAPTERS.md).", show_default=False)] = None,
    rank: Annotated[int, typer.Option(help="With --adapter: the LoRA rank.")] = 4,
    trigger: Annotated[Optional[str], typer.Option(
        help="With --adapter: the word to teach (default: the word every caption shares).",
        show_default=False)] = None,
    scenes: Annotated[float, typer.Option(
        help="With --adapter: the share of each batch shrunk into two-object scenes (\"a WORD above a dog\"), "
        "so the word also works beside other objects; 0 turns them off.")] = 0.5,
    prior_weight: Annotated[float, typer.Option(
        help="With --adapter: the weight of the term that keeps the base model's answers to other prompts.")] = 1.0,
    distill: Annotated[bool, typer.Option(
        help="Distil a frozen model (--init, default: the default model) into a few-step student for "
        "`diffgen sample --fast` instead of training a model; writes RUN/student.safetensors "
        "(docs/DISTILL.md).")] = False,
    check: Annotated[bool, typer.Option(help="Only lint the data folder, do not train.")] = False,
    plan: Annotated[bool, typer.Option(
        help="Only print what the run would do: the data, the model, each stage's steps and how long "
        "it would take here (a few steps of each are timed; nothing is written).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or messages.")] = False,
    threads: ThreadsOption = None,
    debug: DebugOption = False,
) -> None:
    """Train a CLIP text encoder and a U-Net from scratch on a captioned folder (torchrun for DDP)."""
    import dataclasses

    with user_errors(debug):
        from diffgen.config import Config, load_config
        from diffgen.threads import apply_threads

        apply_threads(threads)
        from diffgen.presets import config_path

        if adapter is not None and (config is not None or budget is not None or text_encoder is not None):
            raise InputError("--adapter trains on a frozen --init model: --config, --budget and --text-encoder "
                             "do not apply")
        if distill and (adapter is not None or config is not None or text_encoder is not None):
            raise InputError("--distill trains a student of a frozen --init model: --adapter, --config and "
                             "--text-encoder do not apply")
        if distill:
            from diffgen.training import distill_stage

            cfg = Config()  # the teacher's own config is used; only the steps and batch size are read
            steps = distill_stage.DEFAULT_STEPS if steps is None else steps
            batch_size = distill_stage.DEFAULT_BATCH if batch_size is None else batch_size
            if steps < 1:
                raise InputError("--steps must be at least 1 with --distill")
        elif adapter is not None:
            from diffgen.training.adapter_stage import DEFAULT_BATCH, DEFAULT_STEPS

            cfg = Config()  # the base model's own config is used; only the steps and batch size are read
            steps = DEFAULT_STEPS if steps is None else steps
            batch_size = DEFAULT_BATCH if batch_size is None else batch_size
            if steps < 1:
                raise InputError("--steps must be at least 1 with --adapter")
        elif config is not None:
            cfg = load_config(config_path(config))
        elif init is not None or text_encoder is not None:
            cfg = Config()
        else:  # a new run: chosen for the folder and the machine (training/recipe.py)
            from diffgen.devices import pick_device
            from diffgen.training.recipe import folder_config

            cfg, how = folder_config(data, out or Path("runs") / data.resolve().name, resume,
                                     pick_device(device).type)
            if not quiet and int(os.environ.get("RANK", "0")) == 0:
                typer.echo(how, err=True)
        overrides: dict[str, Any] = {k: v for k, v in (("steps", steps), ("clip_steps", clip_steps),
                                                       ("batch_size", batch_size)) if v is not None}
        for key, value in overrides.items():
            least = 1 if key == "batch_size" else 0
            if value < least:
                raise InputError(f"--{key.replace('_', '-')} must be at least {least}")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides))
        for option, minutes in (("--time-limit", time_limit), ("--budget", budget)):
            if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
                raise InputError(f"{option} must be a positive number of minutes, got {minutes}")
        if time_limit is not None and budget is not None:
            raise InputError("--budget plans the whole run and replaces --time-limit: give one of them")
        if check:
            report = print_data_report(data, cfg.image_size)
            if not report.items:
                raise InputError(f"no usable image-caption pairs in {data}")
            return
        from diffgen.training import TrainOptions, run_training

        out = out or Path("runs") / data.resolve().name
        log = (lambda message: None) if quiet else (lambda message: typer.echo(message, err=True))
        options = TrainOptions(data, out, cfg, resume, text_encoder, device, progress=not quiet, say=log,
                               time_limit=None if time_limit is None else 60 * time_limit,
                               budget=None if budget is None else 60 * budget, weights_dtype=weights_dtype,
                               init=init, name=name)
        if distill:
            from diffgen.training.distill_stage import train_distill

            if plan:
                raise InputError("--plan does not cover --distill runs yet")
            check_output_dir(out)
            summary = train_distill(options)
            if not quiet:
                typer.echo(f"student: {summary['student']}", err=True)
            typer.echo(json.dumps(summary))
            return
        if adapter is not None:
            from diffgen.training.adapter_stage import AdapterOptions, train_adapter

            if plan:
                raise InputError("--plan does not cover --adapter runs yet")
            check_output_dir(out)
            summary = train_adapter(options, AdapterOptions(adapter, rank, trigger, prior_weight=prior_weight,
                                                               scene_share=scenes))
            if not quiet:
                typer.echo(f"adapter: {summary['adapter']}", err=True)
            typer.echo(json.dumps(summary))
            return
        if plan:
            from diffgen.devices import pick_device
            from diffgen.training.plan import plan_lines

            for line in plan_lines(options, pick_device(device)):
                typer.echo(line)
            return
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun the main process checks and holds it
            check_output_dir(out)
        summary = run_training(options)
        if not quiet and int(os.environ.get("RANK", "0")) == 0:
            typer.echo(f"model: {out / 'model.safetensors'}", err=True)
        if int(os.environ.get("RANK", "0")) == 0:
            typer.echo(json.dumps(summary))

