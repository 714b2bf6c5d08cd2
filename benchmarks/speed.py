"""Speed of sampling and training, FLOPs, overheads and start-up latency.

Run: .venv/bin/python benchmarks/speed.py [--quick]   (prints Markdown sections; run_all.py
collects them into docs/BENCHMARKS.md). Random weights: speed does not depend on training.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffgen import devices
from diffgen.checkpoint import save_model
from diffgen.config import Config, load_config
from diffgen.engine.denoiser import Conditioning, denoising_loss, noised
from diffgen.engine.model import build_model
from diffgen.sampling.generate import ImageTask, generate

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"tiny": ROOT / "configs/tiny.toml", "default": ROOT / "configs/default.toml",
           "gpu64": ROOT / "configs/gpu64.toml"}


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul throughput of this machine, FLOP/s (the practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def unet_inputs(cfg: Config, model, batch: int):
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
    cond, _ = model.encode_prompts(["a panda on a bike"] * batch)
    return x, cond


def flops_per_forward(model, cfg: Config, batch: int) -> float:
    x, cond = unet_inputs(cfg, model, batch)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.denoiser(x, torch.ones(batch), cond)
    return counter.get_total_flops()


def time_it(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sampling_rows(name: str, batches: list[int], steps: int, peak: float) -> list[str]:
    cfg = load_config(CONFIGS[name])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rows = []
    for batch in batches:
        tasks = [ImageTask(index=k, prompt="a panda on a bike", seed=k, steps=steps, guidance=3.0, upscale=False)
                 for k in range(batch)]
        # the U-Net forwards alone: the same number of calls on the same (guided, 2B) batch
        x, cond = unet_inputs(cfg, model, 2 * batch)
        x = x.contiguous(memory_format=torch.channels_last)  # as generate() feeds the U-Net on a CPU
        sigma = torch.full((2 * batch,), 1.0)

        def forwards():
            with torch.inference_mode():
                for _ in range(steps):
                    model.denoiser(x, sigma, cond)
        # alternate the two measurements and keep each one's best, so drifting clock speed or
        # background load does not land on one side only
        whole_times, unet_times = [], []
        for _ in range(2 if batch > 16 else 4):
            whole_times.append(time_it(lambda: list(generate(model, tasks, batch_size=batch)), 1))
            unet_times.append(time_it(forwards, 1))
        whole, unet_only = min(whole_times), min(unet_times)
        flops = flops_per_forward(model, cfg, 2 * batch)
        rows.append(f"| {name} | {batch} | {steps} | {batch / whole:.2f} | {whole / steps * 1e3:.1f} | "
                    f"{flops / 1e9:.2f} | {flops * steps / whole / 1e9:.1f} | {flops * steps / whole / peak:.1%} | "
                    f"{whole / unet_only:.3f} |")
    return rows


def training_rows(names: list[str], steps: int = 3) -> list[str]:
    """One diffusion training step per config: the loss as training/stages.py computes it (``noised``
    with the config's denoiser section, ``denoising_loss``) under the config's precision, backward,
    gradient clipping, AdamW."""
    rows = []
    cpu = torch.device("cpu")
    for name in names:
        cfg = load_config(CONFIGS[name])
        torch.manual_seed(0)
        model = build_model(cfg)
        unet = model.denoiser.net.train()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        batch = cfg.train.batch_size if name != "gpu64" else 8  # gpu64's batch does not fit a CPU run
        x = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
        cond = Conditioning(*[t.detach() for t in unet_inputs(cfg, model, batch)[1].__dict__.values()])
        d, train, gen = cfg.denoiser, cfg.train, torch.Generator().manual_seed(0)

        def step():
            noisy, sigma = noised(x, d.p_mean, d.p_std, gen, d.high_noise_share, (d.high_noise_min_sigma, d.sigma_max))
            with devices.autocast(cpu, train.precision):
                loss = denoising_loss(model.denoiser, noisy, sigma, x, cond).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds = time_it(step, steps)
        params = sum(p.numel() for p in unet.parameters())
        precision = "bf16" if devices.uses_bf16(cpu, train.precision) else "fp32"
        rows.append(f"| {name} | {cfg.image_size} | {params / 1e6:.2f} M | {batch} | {precision} | {seconds:.3f} | "
                    f"{batch / seconds:.1f} |")
    return rows


def cli_latency() -> list[str]:
    exe = str(Path(sys.executable).with_name("diffgen"))
    rows = []
    for args in (["--help"], ["sample", "--help"]):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([exe, *args], capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        rows.append(f"| `diffgen {' '.join(args)}` | {statistics.median(times) * 1e3:.0f} ms |")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ckpt = Path(tmp) / "default.safetensors"
        save_model(ckpt, build_model(Config()))
        start = time.perf_counter()
        subprocess.run([exe, "sample", "a panda on a bike", "-n", "1", "--steps", "20", "--seed", "0",
                        "-q", "-c", str(ckpt), "-o", str(Path(tmp) / "out"), "--device", "cpu"],
                       capture_output=True, check=True)
        rows.append(f"| cold start to first PNG (default config, 20 steps, 1 image) | "
                    f"{time.perf_counter() - start:.2f} s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer settings (for a smoke run)")
    parser.add_argument("--sampling", default=None,
                        help="comma-separated configs for the sampling table only (e.g. gpu64); skips the rest")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    peak = matmul_peak()
    print(f"Measured fp32 matmul peak (2048x2048): {peak / 1e9:.1f} GFLOP/s, {torch.get_num_threads()} threads\n")
    print("### Sampling (dpmpp-2m, guidance 3: each step is one U-Net forward on 2 x batch)\n")
    print("| config | batch | steps | images/s | ms/step | GFLOP/forward | achieved GFLOP/s | of matmul peak | "
          "overhead (whole / U-Net only) |")
    print("|---|---|---|---|---|---|---|---|---|")
    batches = [1, 16] if args.quick else [1, 16, 64]
    # gpu64 is the shipped default model: 5.4x the FLOPs of the default config, so fewer batches
    plan = {"tiny": batches, "default": batches, **({} if args.quick else {"gpu64": [1, 8]})}
    if args.sampling:
        plan = {name: [1, 8] if name == "gpu64" else batches for name in args.sampling.split(",")}
    for name, sizes in plan.items():
        for row in sampling_rows(name, sizes, 20, peak):
            print(row, flush=True)
    if args.sampling:
        return
    print("\n### Training step (U-Net + the diffusion stage's loss + AdamW, CPU)\n")
    print("| config | px | U-Net params | batch | precision | s/step | images/s |")
    print("|---|---|---|---|---|---|---|")
    for row in training_rows(["tiny", "default"] if args.quick else ["tiny", "default", "gpu64"]):
        print(row)
    print("\n### Start-up\n")
    print("| what | time |")
    print("|---|---|")
    for row in cli_latency():
        print(row)


if __name__ == "__main__":
    main()
