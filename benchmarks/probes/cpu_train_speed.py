"""Training-step speed on this CPU: where the work happens and what the arithmetic costs.

One U-Net training step (the diffusion stage's loss as training/stages.py computes it: ``noised``
with the config's denoiser section, then ``denoising_loss``; backward, AdamW) is timed for each
variant, alternating the variants over several rounds in one process so that a slow moment of the
machine hits them all.
Variants: the shipped 64 px config (fp32, bf16 autocast, channels-last), the same U-Net on 32 px
pixels, and U-Nets that work on 16x16 or 8x8 latents (what a small autoencoder would hand them).
Text conditioning is random (B, 77, D) states: its cost is not part of the U-Net step.

Run: .venv/bin/python benchmarks/probes/cpu_train_speed.py [--threads 2] [--batch 32] [--rounds 3] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffgen.config import Config, UNetConfig, load_config
from diffgen.engine.denoiser import Conditioning, Denoiser, denoising_loss, noised
from diffgen.engine.unet import UNet

ROOT = Path(__file__).resolve().parents[2]  # the repository, two folders up


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    size: int  # spatial size the U-Net works at
    unet: UNetConfig
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


def variants(base: Config) -> list[Variant]:
    u = base.unet
    latent16 = dataclasses.replace(u, in_channels=4, channel_mult=(2, 4, 4), attention_resolutions=(16, 8, 4))
    latent8 = dataclasses.replace(u, in_channels=8, base_channels=64, channel_mult=(2, 2, 2),
                                  attention_resolutions=(8, 4, 2))
    pixel32 = dataclasses.replace(u, channel_mult=(1, 2, 4), attention_resolutions=(32, 16, 8))
    return [
        Variant("pixel64 fp32 (shipped)", 64, u),
        Variant("pixel64 bf16 autocast", 64, u, bf16=True),
        Variant("pixel64 channels-last", 64, u, channels_last=True),
        Variant("pixel64 torch.compile", 64, u, compile=True),
        Variant("pixel64 bf16 + channels-last", 64, u, bf16=True, channels_last=True),
        Variant("pixel64 bf16 + channels-last + compile", 64, u, bf16=True, channels_last=True, compile=True),
        Variant("pixel32 fp32", 32, dataclasses.replace(u, channel_mult=(1, 2, 4))),
        Variant("pixel32 fp32, attention 32/16/8", 32, pixel32),
        Variant("pixel32 bf16 autocast", 32, dataclasses.replace(u, channel_mult=(1, 2, 4)), bf16=True),
        # the shipped U-Net's own layers at 32 px (attention at the same levels): what a resolution
        # curriculum would train before going on at 64 px with `diffgen train --init`
        Variant("pixel32 bf16, shipped layers (attention 8/4)", 32,
                dataclasses.replace(u, attention_resolutions=(8, 4)), bf16=True),
        Variant("pixel32 bf16 + channels-last", 32, dataclasses.replace(u, channel_mult=(1, 2, 4)), bf16=True,
                channels_last=True),
        Variant("latent 16x16x4 fp32 (64/128/128)", 16, latent16),
        Variant("latent 16x16x4 bf16 autocast", 16, latent16, bf16=True),
        Variant("latent 16x16x4 bf16 + channels-last", 16, latent16, bf16=True, channels_last=True),
        Variant("latent 8x8x8 fp32 (128/128/128)", 8, latent8),
    ]


def make_step(v: Variant, cfg: Config, batch: int) -> tuple[Callable[[], None], int, float]:
    """A closure running one training step; the U-Net's parameter count and GFLOP per forward."""
    torch.manual_seed(0)
    net = UNet(v.unet, v.size, cfg.text.width, cfg.text.embed_dim).train()
    denoiser = Denoiser.from_config(net, cfg)
    x = torch.randn(batch, v.unet.in_channels, v.size, v.size)
    cond = Conditioning(torch.randn(batch, cfg.text.context_length, cfg.text.width),
                        torch.randn(batch, cfg.text.embed_dim))
    if v.channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        denoiser(x, torch.ones(batch), cond)
    flops = counter.get_total_flops() / batch
    if v.compile:
        denoiser = torch.compile(denoiser)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if v.bf16 else contextlib.nullcontext()
    d, gen = cfg.denoiser, torch.Generator().manual_seed(0)

    def step() -> None:
        noisy, sigma = noised(x, d.p_mean, d.p_std, gen, d.high_noise_share, (d.high_noise_min_sigma, d.sigma_max))
        with autocast:
            loss = denoising_loss(denoiser, noisy, sigma, x, cond).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in net.parameters()), flops / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/gpu64.toml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    parser.add_argument("--only", nargs="*", default=None, help="substrings of variant names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    chosen = [v for v in variants(cfg) if not args.only or any(s in v.name for s in args.only)]
    steps = {}
    for v in chosen:
        started = time.perf_counter()
        step, params, gflop = make_step(v, cfg, args.batch)
        step()  # warm-up (and compilation)
        steps[v.name] = (step, params, gflop, time.perf_counter() - started)
    times: dict[str, list[float]] = {v.name: [] for v in chosen}
    for _ in range(args.rounds):
        for v in chosen:
            step = steps[v.name][0]
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[v.name].append((time.perf_counter() - start) / args.steps)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu}; torch {torch.__version__}; {args.threads} thread(s); batch {args.batch}; "
          f"median of {args.rounds} rounds x {args.steps} steps\n")
    print("| variant | px | U-Net params | GFLOP/forward/image | s/step | images/s | achieved GFLOP/s (3x fwd) |")
    print("|---|---|---|---|---|---|---|")
    for v in chosen:
        _, params, gflop, _ = steps[v.name]
        seconds = statistics.median(times[v.name])
        rate = args.batch / seconds
        print(f"| {v.name} | {v.size} | {params / 1e6:.2f} M | {gflop:.2f} | {seconds:.3f} | {rate:.1f} | "
              f"{3 * gflop * rate:.0f} |")


if __name__ == "__main__":
    main()
