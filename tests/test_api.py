"""The public Python API: the same images as the CLI, byte for byte, and a cheap import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import diffgen
from diffgen.cli import app
from diffgen.errors import InputError
from diffgen.sampling.tasks import same_image


def test_import_is_cheap_and_names_the_public_api():
    code = "import sys, diffgen; print('torch' in sys.modules); print(sorted(dir(diffgen)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, names = out.splitlines()
    assert loaded == "False"
    assert {"load", "Model", "SamplingSettings", "SAMPLER_NAMES"} <= set(eval(names))


def test_api_images_equal_the_cli_pngs(tiny_checkpoint, tmp_path):
    model = diffgen.load(tiny_checkpoint, device="cpu")
    images = model.sample(["a red square", "a blue circle"], n=2, seed=5, steps=4, guidance=2.0, sampler="Euler a")
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["sample", "a red square", "a blue circle", "-n", "2", "--seed", "5",
                                      "--steps", "4", "-g", "2", "--sampler", "euler-ancestral", "-c",
                                      str(tiny_checkpoint), "-o", str(out), "-q", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    paths = sorted(out.glob("*.png"))
    assert len(paths) == len(images) == 4
    for path, image in zip(paths, images):
        with Image.open(path) as written:
            assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(image))
            assert written.info["parameters"] == image.info["parameters"]
            assert same_image(json.loads(written.info["diffgen"]), json.loads(image.info["diffgen"]))
    assert json.loads(images[1].info["diffgen"])["seed"] == 6 and "Sampler: Euler a" in images[0].info["parameters"]


def test_a_layout_through_the_api_is_the_clis(tiny_checkpoint, tmp_path):
    model = diffgen.load(tiny_checkpoint, device="cpu")
    images = model.sample("a dog to the left of a cat", n=2, seed=3, steps=3,
                          place={"dog": (0, 0, 0.5, 1), "cat": (0.5, 0, 1, 1)}, layout_strength=4.0)
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["sample", "a dog to the left of a cat", "-n", "2", "--seed", "3", "--steps", "3",
                                      "--place", "dog=0,0,0.5,1", "--place", "cat=0.5,0,1,1", "--layout-strength",
                                      "4", "-c", str(tiny_checkpoint), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    for path, image in zip(sorted(out.glob("*.png")), images, strict=True):
        with Image.open(path) as written:
            assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(image))
            assert same_image(json.loads(written.info["diffgen"]), json.loads(image.info["diffgen"]))
    with pytest.raises(InputError, match="four numbers"):
        model.sample("a dog", place={"dog": (0, 0, 1)})
    with pytest.raises(InputError, match="not in the prompt"):
        model.sample("a dog", place={"cat": (0, 0, 1, 1)})


def test_encode_and_bad_settings(tiny_checkpoint):
    model = diffgen.load(tiny_checkpoint, device="cpu")
    encoding = model.encode(["a red apple", "a green apple"])
    assert encoding.pooled.shape[0] == 2 and encoding.tokens.shape[:2] == (2, 77)
    for kwargs, message in (({"steps": 0}, "steps must be"), ({"sampler": "nope"}, "unknown sampler"),
                            ({"guidance": float("nan")}, "guidance must be"), ({"n": 0}, "at least 1")):
        with pytest.raises(InputError, match=message):
            model.sample("a cat", **kwargs)
    with pytest.raises(InputError, match="non-empty"):
        model.sample([])


def test_setting_grid_cells_are_the_sampled_images_and_the_forward_process_draws(tiny_checkpoint, tmp_path):
    model = diffgen.load(tiny_checkpoint, device="cpu")
    cells, grids = model.setting_grid("a red square", {"guidance": [1.0, 2.5], "steps": [2, 3]}, seed=5)
    assert len(cells) == 4 and len(grids) == 1 and grids[0].width > 2 * 128
    alone = model.sample("a red square", n=1, seed=5, steps=3, guidance=2.5)[0]
    assert np.array_equal(np.asarray(cells[3]), np.asarray(alone))
    source = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(source)
    strip = model.forward_process(source, sigmas=[0.5, 5], prompt="a red square")
    assert strip.width > 2 * 96
