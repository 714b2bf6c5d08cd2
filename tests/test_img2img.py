"""Image-to-image and inpainting from the command line and the Python API: strength 0 gives the
input back, strength 1 ignores it, a mask keeps its black region pixel for pixel, and the recipe
replays the image only from the same input files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import diffgen
from diffgen.cli import app


def picture(path: Path, seed: int, size: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def sample(checkpoint: Path, out: Path, *args) -> list[np.ndarray]:
    result = CliRunner().invoke(app, ["sample", "a red square", "-n", "2", "--seed", "4", "--steps", "4",
                                      "-c", str(checkpoint), "-o", str(out), "-q", *map(str, args)])
    assert result.exit_code == 0, result.output
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(out.glob("0*.png"))]


def test_strength_zero_gives_the_input_and_strength_one_ignores_it(tiny_checkpoint, tmp_path):
    source = picture(tmp_path / "in.png", 0)
    kept = sample(tiny_checkpoint, tmp_path / "s0", "--init-image", source, "--strength", "0")
    assert all(np.array_equal(image, np.asarray(Image.open(source))) for image in kept)
    plain = sample(tiny_checkpoint, tmp_path / "plain")
    for name, init in (("a", source), ("b", picture(tmp_path / "other.png", 1))):
        full = sample(tiny_checkpoint, tmp_path / f"s1{name}", "--init-image", init, "--strength", "1")
        assert all(np.array_equal(a, b) for a, b in zip(full, plain))


def test_partial_strength_depends_on_the_input_and_is_reproducible(tiny_checkpoint, tmp_path):
    first, second = picture(tmp_path / "a.png", 0), picture(tmp_path / "b.png", 1)
    a1 = sample(tiny_checkpoint, tmp_path / "a1", "--init-image", first, "--strength", "0.5")
    a2 = sample(tiny_checkpoint, tmp_path / "a2", "--init-image", first, "--strength", "0.5")
    b = sample(tiny_checkpoint, tmp_path / "b", "--init-image", second, "--strength", "0.5")
    assert all(np.array_equal(x, y) for x, y in zip(a1, a2))
    assert not np.array_equal(a1[0], b[0])
    with Image.open(next((tmp_path / "a1").glob("00000-*.png"))) as image:
        assert "Denoising strength: 0.5" in image.info["parameters"]
        edit = json.loads(image.info["diffgen"])["edit"]
        assert edit["strength"] == 0.5 and len(edit["init_sha256"]) == 64


def test_inpainting_keeps_the_black_region_pixel_for_pixel(tiny_checkpoint, tmp_path):
    source = picture(tmp_path / "in.png", 2)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255  # repaint the left half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    images = sample(tiny_checkpoint, tmp_path / "out", "--init-image", source, "--mask", tmp_path / "mask.png",
                    "--strength", "1")
    original = np.asarray(Image.open(source))
    for image in images:
        assert np.abs(image[:, 4:].astype(int) - original[:, 4:]).max() <= 1  # kept (to the quantisation level)
        assert np.abs(image[:, :4].astype(int) - original[:, :4]).max() > 20  # repainted


def test_replay_needs_the_same_input_file_and_the_api_matches_the_cli(tiny_checkpoint, tmp_path):
    source = picture(tmp_path / "in.png", 3)
    cli_images = sample(tiny_checkpoint, tmp_path / "cli", "--init-image", source, "--strength", "0.6")
    model = diffgen.load(tiny_checkpoint, device="cpu")
    api_images = model.sample("a red square", n=2, seed=4, steps=4, init_image=source, strength=0.6)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(cli_images, api_images))
    made = sorted((tmp_path / "cli").glob("0*.png"))[1]
    replay = CliRunner().invoke(app, ["sample", "--replay", str(made), "-c", str(tiny_checkpoint),
                                      "-o", str(tmp_path / "replay"), "-q"])
    assert replay.exit_code == 0, replay.output
    assert (tmp_path / "replay" / made.name).read_bytes() == made.read_bytes()
    picture(source, 9)  # the input file changes
    again = CliRunner().invoke(app, ["sample", "--replay", str(made), "-c", str(tiny_checkpoint),
                                     "-o", str(tmp_path / "again")])
    assert again.exit_code == 2 and "changed since the recipe was made" in again.output


def test_bad_edit_options_are_one_line_exit_2(tiny_checkpoint, tmp_path):
    source = picture(tmp_path / "in.png", 0)
    for args, message in ((["--strength", "0.5"], "need an --init-image"),
                          (["--init-image", str(tmp_path / "none.png")], "init image not found"),
                          (["--init-image", str(source), "--strength", "1.5"], "strength must be"),
                          (["--init-image", str(source), "--mask-blur", "3"], "needs a --mask")):
        result = CliRunner().invoke(app, ["sample", "a cat", "-c", str(tiny_checkpoint), "-o", str(tmp_path / "x"),
                                          *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1
