"""Helpers shared by several test files: paths, tiny datasets and sprites, the CLI runners, the
tiny training config and the checks that compare training runs. Fixtures live in conftest.py."""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import torch
from PIL import Image, ImageChops, ImageDraw, PngImagePlugin
from safetensors.torch import load_file
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent


# --- tiny models and datasets ------------------------------------------------------------------

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


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("square", "circle", "triangle")


def make_shapes_folder(folder: Path, count: int = 24, size: int = 16, seed: int = 0) -> Path:
    """A captioned folder of coloured shapes on white, with .txt captions (two lines each)."""
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


# --- metadata.jsonl captions: negatives and object regions ----------------------------------------

def with_negatives(folder: Path) -> Path:
    """The shapes folder captioned by metadata.jsonl instead of .txt files, each image with the
    same shape in another colour as its negative caption."""
    rows = []
    for txt in sorted(folder.glob("*.txt")):
        caption = txt.read_text().splitlines()[0]  # "a red square"
        colour = caption.split()[1]
        other = list(COLOURS)[(list(COLOURS).index(colour) + 1) % len(COLOURS)]
        rows.append({"file_name": txt.with_suffix(".png").name, "text": [caption],
                     "negative_text": caption.replace(colour, other)})
        txt.unlink()
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def with_regions(folder: Path) -> Path:
    """The shapes folder captioned by metadata.jsonl, each shape's word with the box it is drawn in."""
    rows = []
    for txt in sorted(folder.glob("*.txt")):
        caption = txt.read_text().splitlines()[0]  # "a red square"
        image = Image.open(txt.with_suffix(".png")).convert("RGB")
        x0, y0, x1, y1 = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
        side = image.width
        start = caption.rindex(" ") + 1
        rows.append({"file_name": txt.with_suffix(".png").name, "text": [caption],
                     "regions": [[[start, len(caption), x0 / side, y0 / side, x1 / side, y1 / side]]]})
        txt.unlink()
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def with_pair_regions(folder: Path) -> Path:
    """The shapes folder captioned "a SHAPE beside a blank" by metadata.jsonl: the shape's word with
    the box it is drawn in, "blank" with the image's other half."""
    rows = []
    for txt in sorted(folder.glob("*.txt")):
        shape = txt.read_text().split()[2]  # "a red square" -> "square"
        image = Image.open(txt.with_suffix(".png")).convert("RGB")
        x0, y0, x1, y1 = (v / image.width for v in
                          ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox())
        caption = f"a {shape} beside a blank"
        blank = (0.5, 0.0, 1.0, 1.0) if x0 + x1 < 1 else (0.0, 0.0, 0.5, 1.0)
        rows.append({"file_name": txt.with_suffix(".png").name, "text": [caption],
                     "regions": [[[2, 2 + len(shape), x0, y0, x1, y1],
                                  [len(caption) - 5, len(caption), *blank]]]})
        txt.unlink()
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


# --- Gaussian data, for which the ideal denoiser is known ------------------------------------------

GAUSSIAN_MU, GAUSSIAN_S = 0.3, 0.5


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The ideal denoiser for x0 ~ N(GAUSSIAN_MU, GAUSSIAN_S^2) per pixel."""
    s2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
    return (GAUSSIAN_S**2 * x + s2 * GAUSSIAN_MU) / (GAUSSIAN_S**2 + s2)


# --- sprites for the emoji scene composer and the sprite matcher ---------------------------------

def scene_items():
    """Six concepts for the scene composer, drawn by ``scene_sprites``."""
    from diffgen.emoji.scenes import Concept

    return [Concept("x", "panda", "pandas", "animal"), Concept("x", "bicycle", "bicycles", "vehicle"),
            Concept("x", "apple", "apples", "food"), Concept("x", "dog", "dogs", "animal"),
            Concept("x", "grapes", "grapes", "food"), Concept("x", "house", "houses", "building")]


def scene_sprites() -> dict[str, Image.Image]:
    """One ellipse per concept of ``scene_items``, each of its own size and colour."""
    out = {}
    for i, c in enumerate(scene_items()):
        image = Image.new("RGBA", (20, 16 + i), (0, 0, 0, 0))
        ImageDraw.Draw(image).ellipse([0, 0, 19, 15 + i], fill=(40 * i, 200 - 30 * i, 90, 255))
        out[c.name] = image
    return out


def scene_composer(held=frozenset()):
    """A scene composer of 32 px scenes over ``scene_items``, with ``held`` pairs held out."""
    from diffgen.emoji.scenes import SceneComposer

    return SceneComposer(scene_sprites(), scene_items(), 32, set(held))


SPRITE_COLOUR = (200, 120, 30, 255)
SPRITE_SHAPES = {
    "square": lambda d: d.rectangle([0, 0, 29, 29], fill=SPRITE_COLOUR),
    "disk": lambda d: d.ellipse([0, 0, 29, 29], fill=SPRITE_COLOUR),
    "triangle": lambda d: d.polygon([(15, 0), (29, 29), (0, 29)], fill=SPRITE_COLOUR),
    "ring": lambda d: (d.ellipse([0, 0, 29, 29], fill=SPRITE_COLOUR), d.ellipse([9, 9, 20, 20], fill=(0, 0, 0, 0))),
    "cross": lambda d: (d.rectangle([11, 0, 18, 29], fill=SPRITE_COLOUR),
                        d.rectangle([0, 11, 29, 18], fill=SPRITE_COLOUR)),
}


def shape_sprites(shapes: dict | None = None) -> dict[str, Image.Image]:
    """RGBA sprites (30 px) drawn from ``shapes`` (default: SPRITE_SHAPES): one colour, so only
    the shape tells them apart."""
    out = {}
    for name, draw in (shapes or SPRITE_SHAPES).items():
        image = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
        draw(ImageDraw.Draw(image))
        out[name] = image
    return out


# --- the command line --------------------------------------------------------------------------

def run(*args, env: dict | None = None):
    """``diffgen ARGS`` through Typer's CliRunner (arguments may be paths), 200 columns wide."""
    from diffgen.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})


def sample(ckpt, out, *args):
    """``diffgen sample`` with 3 steps and seed 7, quiet."""
    return run("sample", "-c", ckpt, "-o", out, "--steps", "3", "--seed", "7", "-q", *args)


def pngs(folder: Path) -> list[Path]:
    """The sampled images of a folder (no grids, no trajectories), by name."""
    return sorted(p for p in folder.glob("*.png") if "trajectory" not in p.name and "grid" not in p.name)


def cli(*args: str):
    """``diffgen ARGS`` through Typer's CliRunner."""
    from diffgen.cli import app

    return CliRunner().invoke(app, list(args))


# --- training ----------------------------------------------------------------------------------

def train_config(**changes: dict) -> str:
    """TOML of the tiny config, quick to train (8 px, a state every 4 steps, no grids), with
    ``changes`` per section (``unet={"base_channels": 8}``, ``top={"image_size": 16}``), checked
    together as one config."""
    from diffgen.config import config_from_dict, config_to_dict, config_to_toml, load_config

    data = config_to_dict(load_config(ROOT / "configs" / "tiny.toml"))
    data["train"].update(checkpoint_every=4, sample_every=1000)
    for section, values in changes.items():
        (data if section == "top" else data[section]).update(values)
    return config_to_toml(config_from_dict(data))


TRAIN_CONFIG = train_config()


def train_args(data: Path, out: Path, config: Path, steps: int = 24, clip_steps: int = 6) -> list[str]:
    return ["train", str(data), "-o", str(out), "--config", str(config), "--steps", str(steps),
            "--clip-steps", str(clip_steps), "--device", "cpu", "-q"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file."""
    return load_file(str(path))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> float:
    """The largest elementwise difference between two sets of weights, over ``a``'s keys that start
    with ``prefix``."""
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if k.startswith(prefix))


def metrics(run: Path) -> list[dict]:
    """The rows of a run folder's metrics.jsonl, in order."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def diffusion_metrics(run: Path) -> list[dict]:
    """The diffusion stage's rows of a run folder's metrics.jsonl, in order."""
    return [r for r in metrics(run) if r["stage"] == "diffusion"]


def summary(result) -> dict:
    """The JSON summary `diffgen train` prints as its last line of stdout."""
    return json.loads(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Wait until ``condition()`` holds while ``proc`` runs; fail if it ends or time runs out."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def kill_when(proc: subprocess.Popen, state_dir: Path, pattern: str, extra_delay: float) -> None:
    """SIGKILL the run a moment after a state matching ``pattern`` appears (mid-step, mid-write)."""
    deadline = time.monotonic() + 120
    while not list(state_dir.glob(pattern)):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(extra_delay)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# --- hostile files -------------------------------------------------------------------------------

def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose header is rewritten to claim width x height (CRC fixed)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def one_error_line(result, code: int, message: str) -> str:
    """The single ``error:`` line of a refused command, checked: its exit code, the message in it,
    and no Python exception's name."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Error" not in lines[0].split(":")[1]  # a diffgen message, not a Python exception's name
    return lines[0]


def png_with_recipe(path: Path, **changes) -> Path:
    """An 8 px PNG carrying a diffgen recipe (a cat, seed 1, 2 Euler steps) with ``changes``."""
    recipe = {"index": 0, "prompt": "a cat", "seed": 1, "negative": "", "steps": 2, "sampler": "euler",
              "schedule": "karras", "guidance": 1.0, **changes}
    info = PngImagePlugin.PngInfo()
    info.add_text("diffgen", json.dumps(recipe))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path
