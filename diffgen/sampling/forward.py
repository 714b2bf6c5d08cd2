"""The forward process, visible: an image destroyed by noise level by level, and what the network
predicts back from each noisy version.

Training adds noise x = x0 + sigma * eps and teaches the denoiser D(x, sigma) to estimate x0. The
strip shows x at each sigma, scaled by 1 / sqrt(1 + sigma^2) so that its pixel values stay in range
(the variance-preserving view of the same image: it fades into noise instead of saturating), and,
with ``denoise``, the model's one-step estimate D(x, sigma) under it. Each column is labelled with
sigma and the signal-to-noise ratio sigma_data^2 / sigma^2.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from diffgen.errors import InputError

DEFAULT_SIGMAS = (0.1, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0)
# At most this many noise levels, one column each: memory grows with every column (20,000 levels
# took gigabytes), and a strip of more than 64 columns of 96 px is past reading anyway.
MAX_SIGMAS = 64
# The noise levels drawn: beyond these the labels' signal-to-noise ratio overflows a float
# (sigma 1e300), and the model was trained within 0.002 to 80.
SIGMA_RANGE = (1e-4, 1e4)
SEED_LIMIT = 2**63  # torch.Generator's seeds, as for `diffgen sample` and `diffgen upscale`


def noisy_versions(image: torch.Tensor, sigmas: list[float], seed: int) -> torch.Tensor:
    """(len(sigmas), C, H, W): x0 + sigma * eps with ONE noise image eps (from ``seed``) for all levels,
    so the columns differ only in how much of it is added."""
    eps = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    return torch.stack([image + sigma * eps for sigma in sigmas])


def forward_strip(image_path: Path, sigmas: list[float], seed: int = 0, model=None, prompt: str = "",
                  cell: int = 96) -> Image.Image:
    """The labelled strip (and, given ``model``, the row of one-step estimates D(x, sigma))."""
    import numpy as np

    from diffgen.data import check_image, load_image
    from diffgen.sampling.images import labelled_grid, to_pil

    if not sigmas or any(not (math.isfinite(s) and s > 0) for s in sigmas):
        raise InputError(f"--sigmas must be positive numbers, got {_shown(sigmas)}")
    if len(sigmas) > MAX_SIGMAS:
        raise InputError(f"--sigmas takes at most {MAX_SIGMAS} noise levels, got {len(sigmas):,}")
    if any(not SIGMA_RANGE[0] <= s <= SIGMA_RANGE[1] for s in sigmas):
        raise InputError(f"--sigmas must be from {SIGMA_RANGE[0]:g} to {SIGMA_RANGE[1]:g}, got {_shown(sigmas)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise InputError(f"--seed must be a whole number in [0, 2^63), got {seed}")
    if not Path(image_path).is_file():
        raise InputError(f"image not found: {image_path}")
    checked = check_image(Path(image_path))  # the one check of every image read: size, shape, bytes
    if isinstance(checked, str):
        raise InputError(f"{image_path}: {checked}")
    size = model.config.image_size if model is not None else 64
    pixels = np.asarray(load_image(image_path, size), dtype=np.float32)
    x0 = torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1
    x = noisy_versions(x0, sigmas, seed)
    shown = [x[i] / math.sqrt(1 + s**2) for i, s in enumerate(sigmas)]
    sigma_data = model.denoiser.sigma_data if model is not None else 0.5
    labels = [f"sigma {s:g}, SNR {sigma_data**2 / s**2:.3g}" for s in sigmas]
    if model is not None:
        with torch.inference_mode():
            cond, _ = model.encode_prompts([prompt] * len(sigmas))
            estimates = model.denoiser(x.to(model.device), torch.tensor(sigmas), cond).float().cpu()
        shown += list(estimates)
        labels += [f"D(x, {s:g})" + (f": {prompt}" if prompt and i == 0 else "") for i, s in enumerate(sigmas)]
    return labelled_grid(to_pil(torch.stack(shown)), labels, columns=len(sigmas), cell=cell)


def _shown(sigmas: list[float]) -> str:
    """The levels as a message shows them: the first few of a long list."""
    return str(sigmas) if len(sigmas) <= 8 else f"[{', '.join(f'{s:g}' for s in sigmas[:8])}, ...]"
