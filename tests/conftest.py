"""Shared fixtures: the tiny config and a tiny random-weight model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffgen.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    return load_config(ROOT / "configs" / "tiny.toml")


@pytest.fixture()
def tiny_model(tiny_config):
    from diffgen.engine.model import build_model

    torch.manual_seed(0)
    return build_model(tiny_config)


def randomize_zero_params(module: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised layers small random weights, as they would have after training.

    Zero-initialised output layers make a fresh network ignore its inputs; tests that check how
    inputs reach the output need them non-zero.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A tiny checkpoint whose zero-initialised layers are made non-zero, so images depend on
    the prompt, the seed and every sampler step."""
    from diffgen.checkpoint import save_model
    from diffgen.engine.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config)
    randomize_zero_params(model.denoiser)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(path, model)
    return path


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("square", "circle", "triangle")


def make_shapes_folder(folder: Path, count: int = 24, size: int = 16, seed: int = 0) -> Path:
    """A captioned folder of coloured shapes on white, with .txt captions (two lines each)."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour = list(COLOURS)[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        r = rng.randint(size // 4, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        elif shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
        image.save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(f"a {colour} {shape}\n{colour} {shape} on white\n")
    return folder


@pytest.fixture()
def shapes_folder(tmp_path) -> Path:
    return make_shapes_folder(tmp_path / "shapes")
