"""The config `diffgen train` uses when none is given: chosen for the folder and the machine.

- **Image size from the data**: the largest of 16, 32 and 64 px that the folder's typical image
  (the median shorter side) reaches; a folder of small pictures is not blown up to 32 px, a folder
  of photos trains at 64 px.
- **The U-Net for the machine**: on a CPU, the recipe measured best per CPU-minute on real folders
  (benchmarks/user_folder.py; docs/BENCHMARKS.md, "Training on your own folder within a budget"):
  a narrow U-Net (16, 32, 64 channels, 1.0 M parameters at 32 px) with one residual block per level
  and attention only at 8 px, a higher learning rate with a short warm-up, and training noise
  centred higher (``CPU_P_MEAN``). At equal CPU time the narrow U-Net drew more recognisable digits
  than the built-in 2.6 M one, whose steps cost 3.8 times more; the noise made the largest
  difference. On a GPU, the built-in config (configs/default.toml), whose extra blocks cost little
  there (not measured on user folders: no GPU was at hand).
- **The CLIP image tower** sees the image as 4 x 4 patches whatever its size (16 tokens): it only
  has to tell the folder's captions apart, and its cost grows with the square of the token count.

bf16 needs no rule here: ``train.precision`` "auto" uses it wherever the CPU or GPU has the units.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from diffgen.config import Config

SIZES = (16, 32, 64)
# The training noise of a CPU run: centred higher than EDM's -1.2 (a log-normal over sigma), so that
# more of a short run goes to the noise levels where a picture's shape is decided. On the digits in
# 15 minutes of one core: 100 of 100 samples read as the prompted digit at -0.4, 36 at -1.2.
CPU_P_MEAN = -0.4
PATCHES_PER_SIDE = 4


def image_size_for(sizes: list[tuple[int, int]]) -> int:
    """The training size for a folder whose images have these (width, height): the largest of
    ``SIZES`` not above the median shorter side (the smallest for a folder of tiny images)."""
    if not sizes:
        return Config().image_size
    typical = statistics.median(min(w, h) for w, h in sizes)
    return max([s for s in SIZES if s <= typical], default=SIZES[0])


def auto_config(sizes: list[tuple[int, int]], device_type: str) -> Config:
    """The config for a folder with images of these sizes on a device of this type ("cpu", "cuda", "mps")."""
    base = Config()
    size = image_size_for(sizes)
    levels = 3 if size <= 32 else 4  # the lowest level at 8 px (4 px for a 16 px image)
    text = dataclasses.replace(base.text, vision_patch_size=size // PATCHES_PER_SIDE)
    if device_type == "cuda":
        unet = dataclasses.replace(base.unet, channel_mult=(1, 2, 2, 2)[:levels],
                                   attention_resolutions=tuple(r for r in (16, 8) if r < size))
        return dataclasses.replace(base, image_size=size, text=text, unet=unet)
    unet = dataclasses.replace(base.unet, base_channels=16, head_dim=16, channel_mult=(1, 2, 4, 4)[:levels],
                               num_res_blocks=1, attention_resolutions=(8,))
    train = dataclasses.replace(base.train, lr=1e-3, warmup_steps=50)
    denoiser = dataclasses.replace(base.denoiser, p_mean=CPU_P_MEAN)
    return dataclasses.replace(base, image_size=size, text=text, unet=unet, denoiser=denoiser, train=train)


def folder_config(data: Path, out: Path, resume: bool, device_type: str) -> tuple[Config, str]:
    """The config of a run started without --config, and a line saying how it was chosen: a
    resumed run's own (its config.toml), else ``auto_config`` for the folder's images."""
    from diffgen.config import load_config
    from diffgen.data import scan_folder

    saved = out / "config.toml"
    if resume and saved.is_file():
        return load_config(saved), f"config: the run's own ({saved})"
    sizes = scan_folder(data, check_tokens=False).sizes
    if not sizes:  # the run refuses such a folder itself, with the reasons
        return Config(), "config: the built-in one (the folder has no usable images)"
    cfg = auto_config(sizes, device_type)
    typical = statistics.median(min(s) for s in sizes)
    unet = "the built-in U-Net" if device_type == "cuda" else "a narrow U-Net for a CPU"
    return cfg, (f"config: chosen for this folder and {device_type.upper()}: {cfg.image_size} px "
                 f"(the median image's shorter side is {typical:g} px), {unet}; "
                 "`diffgen config show` lists the presets, --config picks one")
