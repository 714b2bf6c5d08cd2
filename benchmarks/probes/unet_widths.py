"""Which U-Net trains fastest per step at 32 px on this CPU? One training step (denoising loss at
the config's noise, backward, AdamW) on random 32 px images at batch 32, for the built-in U-Net,
the narrow one `diffgen train` chooses on a CPU (training/recipe.py) and widths in between.

    .venv/bin/python benchmarks/probes/unet_widths.py [--threads 2] [--channels-last]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from diffgen.config import Config, UNetConfig
from diffgen.engine.denoiser import Denoiser, denoising_loss, noised
from diffgen.engine.model import PromptCache, build_model
from diffgen.training.recipe import auto_config

BATCH, SIDE, TIMED = 32, 32, 6
VARIANTS = {
    "built-in: 32, 64, 64 channels, 2 blocks, attention at 16 and 8 px": Config().unet,
    "32, 64, 64 channels, 1 block, attention at 8 px": dataclasses.replace(
        UNetConfig(), num_res_blocks=1, attention_resolutions=(8,)),
    "32, 64, 64 channels, 2 blocks, attention at 8 px": dataclasses.replace(
        UNetConfig(), attention_resolutions=(8,)),
    "narrow (the CPU recipe): 16, 32, 64 channels, 1 block, attention at 8 px": auto_config([(SIDE, SIDE)], "cpu").unet,
}


def seconds_a_step(unet_cfg: UNetConfig, channels_last: bool) -> tuple[float, int]:
    cfg = Config(image_size=SIDE, unet=unet_cfg)
    torch.manual_seed(0)
    model = build_model(cfg, load_pretrained_text=False)
    unet = model.denoiser.net.train()
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    with torch.no_grad():
        cond = PromptCache(model.text_encoder.eval())([f"a handwritten digit {k}" for k in range(BATCH)])

    def step() -> None:
        x0 = torch.rand(BATCH, 3, SIDE, SIDE) * 2 - 1
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        noisy, sigma = noised(x0, cfg.denoiser.p_mean, cfg.denoiser.p_std)
        denoising_loss(Denoiser.from_config(unet, cfg), noisy, sigma, x0, cond).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(), step()  # allocation, caches
    started = time.perf_counter()
    for _ in range(TIMED):
        step()
    return (time.perf_counter() - started) / TIMED, sum(p.numel() for p in unet.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| U-Net | parameters | s a step of {BATCH} | images/s |\n|---|---:|---:|---:|")
    for name, unet_cfg in VARIANTS.items():
        seconds, params = seconds_a_step(unet_cfg, args.channels_last)
        print(f"| {name} | {params / 1e6:.2f} M | {seconds:.3f} | {BATCH / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
