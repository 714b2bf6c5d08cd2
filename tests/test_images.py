"""Filenames, PNG recipes in A1111's format, grids."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from diffgen.errors import InputError
from diffgen.sampling.images import a1111_parameters, image_filename, labelled_grid, read_recipe, save_png, slugify

RECIPE = {"index": 3, "prompt": "a panda on a bike", "negative": "blurry", "seed": 42, "steps": 20,
          "sampler": "dpmpp-2m", "sampler_label": "DPM++ 2M", "schedule": "karras", "guidance": 3.0,
          "width": 32, "height": 32, "model": "default", "model_hash": "0123456789abcdef",
          "version": "0.1.0"}


@pytest.mark.parametrize("prompt, slug", [
    ("A Panda on a Bike!", "a-panda-on-a-bike"),
    ("../../etc/passwd", "etc-passwd"),
    ("C:\\Windows\\x", "c-windows-x"),
    ("café crème", "cafe-creme"),
    ("🐼🚲", "untitled"),
    ("...", "untitled"),
    ("x" * 200, "x" * 48),
])
def test_slug_is_safe(prompt, slug):
    assert slugify(prompt) == slug


def test_filename_format():
    assert image_filename(7, 1234, "a red apple") == "00007-1234-a-red-apple.png"


def test_parameters_text_is_a1111_format():
    assert a1111_parameters(RECIPE) == (
        "a panda on a bike\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 3.0, Seed: 42, "
        "Size: 32x32, Model hash: 0123456789, Model: default, Version: diffgen 0.1.0")
    assert "Negative prompt" not in a1111_parameters({**RECIPE, "negative": ""})


def test_recipe_round_trip_and_missing_recipe(tmp_path):
    path = tmp_path / "x.png"
    save_png(Image.new("RGB", (4, 4)), path, RECIPE)
    assert read_recipe(path) == RECIPE
    with Image.open(path) as image:
        assert image.info["parameters"].startswith("a panda on a bike\n")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    with pytest.raises(InputError, match="no diffgen recipe"):
        read_recipe(plain)
    with pytest.raises(InputError, match="not found"):
        read_recipe(tmp_path / "missing.png")


def test_grid_size():
    images = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    grid = labelled_grid(images, ["a", "b", "c"], columns=2, cell=32)
    assert grid.width == 2 * 36 + 4
    assert grid.getpixel((10, 10)) == (255, 0, 0)


def test_a1111_parameters_quote_values_that_would_break_the_fields():
    import re

    from diffgen.sampling.images import a1111_parameters

    recipe = {"prompt": "a cat, on a mat", "negative": "", "steps": 20, "sampler_label": "DPM++ 2M",
              "schedule": "karras", "guidance": 3.0, "seed": 5, "width": 64, "height": 64,
              "model_hash": "abcdef123456", "model": 'emoji, v2: "test"', "version": "0.1.0"}
    text = a1111_parameters(recipe)
    last = text.splitlines()[-1]
    # A1111's reader: Key: value pairs where a value is a JSON string or runs to the next comma
    pairs = dict(re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', last))
    assert json.loads(pairs["Model"]) == 'emoji, v2: "test"'
    assert pairs["Steps"] == "20" and pairs["Sampler"] == "DPM++ 2M" and pairs["Version"] == "diffgen 0.1.0"
    assert text.splitlines()[0] == "a cat, on a mat"  # the prompt line is not quoted
