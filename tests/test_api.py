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


def test_seeds_give_each_image_its_own_and_callback_reports_every_step(tiny_checkpoint):
    model = diffgen.load(tiny_checkpoint, device="cpu")
    seen: list[tuple[int, int]] = []
    both = model.sample(["a red square", "a blue circle"], seeds=[11, 4], steps=3, batch_size=1,
                        callback=lambda done, total: seen.append((done, total)))
    alone = [model.sample("a red square", seed=11, steps=3, batch_size=1)[0],
             model.sample("a blue circle", seed=4, steps=3, batch_size=1)[0]]
    for image, reference in zip(both, alone, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(reference))
    assert [json.loads(image.info["diffgen"])["seed"] for image in both] == [11, 4]
    assert seen == [(k, 6) for k in range(1, 7)]  # two images of three steps, one at a time
    with pytest.raises(InputError, match="one per image"):
        model.sample("a red square", n=2, seeds=[1])


@pytest.mark.parametrize("kwargs, message", [
    ({"prompts": None}, "prompts must be"), ({"prompts": "a cat", "n": "3"}, "n must be"),
    ({"prompts": "a cat", "seed": "1"}, "seed must be"), ({"prompts": "a cat", "place": "x"}, "place"),
    ({"prompts": "a cat", "batch_size": 0}, "batch_size must be"),
    ({"prompts": "a cat", "batch_size": 100_000}, "more than this 8 px model computes at once"),
    ({"prompts": "a cat", "layout_strength": float("nan"), "place": {"cat": (0, 0, 1, 1)}}, "layout_strength"),
    ({"prompts": "a cat", "upscale": "no"}, "upscale must be true or false"),
    ({"prompts": "a cat", "mask_blur": 2}, "strength, mask and mask_blur need an init_image"),
])
def test_wrongly_typed_arguments_are_one_input_error(tiny_checkpoint, kwargs, message):
    """Python users get the CLI's promise: an InputError naming the argument, never a TypeError."""
    model = diffgen.load(tiny_checkpoint, device="cpu")
    with pytest.raises(InputError, match=message):
        model.sample(**kwargs, steps=1)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.encode(None), "prompts must be"), (lambda m: m.setting_grid("a cat", None), "axes must map"),
    (lambda m: m.setting_grid("a cat", {"steps": "12"}), "axes must map"),
    (lambda m: m.forward_process(3), "image must be a file path"),
    (lambda m: m.forward_process("x.png", sigmas="ab"), "sigmas must be a list of numbers"),
    (lambda m: diffgen.load(3), "path must be a file path"),
])
def test_the_other_api_calls_refuse_wrong_types_with_an_input_error(tiny_checkpoint, call, message):
    model = diffgen.load(tiny_checkpoint, device="cpu")
    with pytest.raises(InputError, match=message):
        call(model)
