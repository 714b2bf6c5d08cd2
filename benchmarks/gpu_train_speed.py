"""Speed of one diffusion training step on a GPU, in variants, with achieved TFLOP/s.

The step is the one `diffgen train` runs (the diffusion stage's loss as training/stages.py computes
it: ``noised`` with the config's denoiser section, then ``denoising_loss``, under the config's
precision; backward, gradient clipping, fused AdamW, EMA) on random images and prompts: speed does
not depend on the data.
Variants: ``base`` (as trained: NCHW), ``channels_last``, ``batch2x`` (twice the config's
batch), ``compile`` (torch.compile of the U-Net, compile time reported apart), and
``channels_last+compile``. Also prints the most expensive GPU kernels of the base step.

Run: python benchmarks/gpu_train_speed.py [--config configs/gpu64.toml] [--variants base,...]
         [--budget SECONDS] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffgen import devices
from diffgen.config import load_config
from diffgen.engine.denoiser import Conditioning, Denoiser, denoising_loss, noised
from diffgen.engine.model import build_model

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("base", "channels_last", "batch2x", "compile", "channels_last+compile")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(cfg, device: torch.device, batch: int, channels_last: bool, compile_net: bool):
    """A closure running one training step, and the U-Net's forward FLOPs for the batch."""
    torch.manual_seed(0)
    model = build_model(cfg, load_pretrained_text=False).to(device)
    unet = model.denoiser.net.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unet.to(memory_format=fmt)
    ema = copy.deepcopy(unet).requires_grad_(False)
    with torch.no_grad():
        prompts = [f"a panda on a bike {k}" for k in range(batch)]
        cond, _ = model.encode_prompts(prompts)
    cond = Conditioning(cond.tokens.detach(), cond.pooled.detach())
    x0 = (torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1).to(memory_format=fmt)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        Denoiser.from_config(unet, cfg)(x0, torch.ones(batch, device=device), cond)
    forward_flops = counter.get_total_flops()
    net = torch.compile(unet) if compile_net else unet
    denoiser = Denoiser.from_config(net, cfg)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    params, ema_params = list(unet.parameters()), list(ema.parameters())
    gen = torch.Generator(device=device).manual_seed(0)
    d, t = cfg.denoiser, cfg.train

    def step() -> torch.Tensor:
        noisy, sigma = noised(x0, d.p_mean, d.p_std, gen, d.high_noise_share, (d.high_noise_min_sigma, d.sigma_max))
        with devices.autocast(device, t.precision):
            loss = denoising_loss(denoiser, noisy, sigma, x0, cond).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 0.001)
        return loss.detach()

    return step, forward_flops


def time_steps(step, device: torch.device, steps: int, repeats: int) -> float:
    """Median seconds per step over ``repeats`` runs of ``steps`` queued steps."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def top_kernels(step, device: torch.device, count: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync(device)
    keys = ("self_device_time_total", "self_cuda_time_total") if device.type == "cuda" else ("self_cpu_time_total",)
    for key in keys:  # the column's name changed across torch versions
        try:
            return prof.key_averages().table(sort_by=key, row_limit=count)
        except (KeyError, AttributeError, RuntimeError):
            continue
    return prof.key_averages().table(row_limit=count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/gpu64.toml"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=None, help="default: the config's batch size")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--budget", type=float, default=200, help="skip variants once this many seconds passed")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    cfg = load_config(args.config)
    batch = args.batch or cfg.train.batch_size
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        a @ b
        sync(device)
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        print(f"bf16 matmul 8192^3: {10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12:.0f} TFLOP/s")
        del a, b
    print(f"config {args.config}, batch {batch}, {args.steps} steps x 3 repeats per variant")
    print("| variant | batch | warm-up s | ms/step | img/s | fwd GFLOP/img | TFLOP/s (3x fwd) | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        if time.perf_counter() - started > args.budget:
            print(f"| {name} | skipped: budget of {args.budget:.0f} s spent | | | | | | |")
            continue
        size = 2 * batch if name == "batch2x" else batch
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step, flops = make_step(cfg, device, size, "channels_last" in name, "compile" in name)
        t = time.perf_counter()
        for _ in range(3):
            step()
        sync(device)
        warm = time.perf_counter() - t
        seconds = time_steps(step, device, args.steps, 3)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        print(f"| {name} | {size} | {warm:.1f} | {1000 * seconds:.1f} | {size / seconds:.0f} | "
              f"{flops / size / 1e9:.2f} | {3 * flops / seconds / 1e12:.1f} | {peak:.1f} |", flush=True)
        if args.profile and name == "base":
            print(top_kernels(step, device))
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
