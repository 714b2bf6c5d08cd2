"""Hostile input, table-driven: each case gives one line on stderr and the documented exit code,
and leaves no output behind. Cases are grouped by the class of fault they belong to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from diffgen.cli import app

from .helpers import png_claiming, png_with_recipe


def make(tmp: Path, name: str) -> str:
    """The input file a case names, created in tmp."""
    makers = {
        "zero": lambda: Path("/dev/zero"),
        "latin1": lambda: (tmp / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1")) and tmp / "latin.txt",
        "bomb": lambda: png_claiming(tmp / "bomb.png", 30000, 30000),
        "prompt_number": lambda: png_with_recipe(tmp / "r1.png", prompt=5),
        "negative_number": lambda: png_with_recipe(tmp / "r2.png", negative=3),
        "index_string": lambda: png_with_recipe(tmp / "r3.png", index="0"),
        "index_float": lambda: png_with_recipe(tmp / "r4.png", index=0.5),
        "index_negative": lambda: png_with_recipe(tmp / "r5.png", index=-1),
        "seed_bool": lambda: png_with_recipe(tmp / "r6.png", seed=True),
        "steps_huge": lambda: png_with_recipe(tmp / "r7.png", steps=1_000_000_000),
        "sampler_number": lambda: png_with_recipe(tmp / "r8.png", sampler=2),
        "good_recipe": lambda: png_with_recipe(tmp / "ok.png"),
    }
    return str(makers[name]())


CASES = [
    # class 1: resources are bounded before they are spent
    ("steps_cli", ["a cat", "--steps", "1000000000"], None, 2, "from 1 to 10000"),
    ("prompt_file_endless", ["-f", "{zero}"], None, 2, "line longer than"),
    ("replay_bomb", ["--replay", "{bomb}"], None, 2, "megapixels"),
    ("replay_steps_huge", ["--replay", "{steps_huge}"], None, 2, "from 1 to 10000"),
    # class 2: every bad file gets exit 2 and one line
    ("prompt_file_latin1", ["-f", "{latin1}"], None, 2, "not UTF-8"),
    ("recipe_prompt_number", ["--replay", "{prompt_number}"], None, 2, "prompt must be text"),
    ("recipe_negative_number", ["--replay", "{negative_number}"], None, 2, "negative must be text"),
    ("recipe_index_string", ["--replay", "{index_string}"], None, 2, "index must be"),
    ("recipe_index_float", ["--replay", "{index_float}"], None, 2, "index must be"),
    ("recipe_index_negative", ["--replay", "{index_negative}"], None, 2, "index must be"),
    ("recipe_seed_bool", ["--replay", "{seed_bool}"], None, 2, "seed must be"),
    ("recipe_sampler_number", ["--replay", "{sampler_number}"], None, 2, "sampler must be"),
    # class 3: nothing is silently lost
    ("replay_with_prompt", ["a dog", "--replay", "{good_recipe}"], None, 2, "drop the prompts"),
]


@pytest.mark.parametrize("name, args, _unused, code, message", CASES, ids=[c[0] for c in CASES])
def test_hostile_sample_input(tiny_checkpoint, tmp_path, name, args, _unused, code, message):
    files = {}
    for arg in args:
        if arg.startswith("{"):
            files[arg[1:-1]] = make(tmp_path, arg[1:-1])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sample", *[a.format(**files) for a in args], "-c", str(tiny_checkpoint),
                                      "-o", str(out)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Error" not in lines[0].split(":")[1]  # a diffgen message, not a Python exception name
    assert not out.exists()


def test_a_huge_image_in_a_data_folder_is_named_and_skipped_quietly(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "ok.png")
    (folder / "ok.txt").write_text("a red square\n")
    png_claiming(folder / "huge.png", 12000, 12000)  # 144 megapixels: past Pillow's warning limit
    (folder / "huge.txt").write_text("a huge image\n")
    result = CliRunner().invoke(app, ["data", "check", str(folder)])
    assert result.exit_code == 0, result.output
    assert "huge.png" in result.output and "image too large" in result.output
    assert "DecompressionBomb" not in result.output


@pytest.mark.parametrize("section, key, value", [("unet", "base_channels", 8192), ("text", "vocab_size", 1_000_000)])
def test_a_checkpoint_whose_config_asks_for_a_huge_model_is_refused_before_allocating(
        tiny_checkpoint, tmp_path, section, key, value):
    import dataclasses
    import resource
    import time

    from diffgen.checkpoint import read_checkpoint, save_checkpoint

    tensors, config, _ = read_checkpoint(tiny_checkpoint)
    huge = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{key: value})})
    path = tmp_path / "huge.safetensors"
    save_checkpoint(path, tensors, huge)  # a consistent content hash: only the shapes give it away
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["sample", "a cat", "-c", str(path), "-o", str(tmp_path / "out")])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.exit_code == 2 and "does not match its config" in result.output, result.output
    assert grown_mb < 200 and time.perf_counter() - started < 10  # 8192 channels would need gigabytes


def test_data_folder_rules_latin1_captions_and_links_that_leave_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8), "blue").save(outside / "secret.png")
    (outside / "secret.txt").write_text("a blue square\n")
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "ok.png")
    (folder / "ok.txt").write_text("a red square\n")
    Image.new("RGB", (8, 8), "green").save(folder / "latin.png")
    (folder / "latin.txt").write_bytes("un carr\xe9 vert\n".encode("latin-1"))
    (folder / "link.png").symlink_to(outside / "secret.png")
    (folder / "link.txt").write_text("a linked image\n")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "../outside/secret.png", "text": "x"}) + "\n")
    result = CliRunner().invoke(app, ["data", "check", str(folder)])
    assert result.exit_code == 0, result.output
    assert "1 usable image-caption pairs" in result.output
    assert "latin.png: caption latin.txt is not UTF-8" in result.output
    assert "link.png: a link to" in result.output and "outside the data folder" in result.output
    assert "../outside/secret.png is outside" in result.output
