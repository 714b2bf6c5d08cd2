"""Hostile values: numbers that are fine in float64 but not in float32 (prompt weights, guidance, config
floats), sizes taken on trust from files (a checkpoint's or a training state's config, a recipe's batch,
a config file's length), a state JSON without its hash, prompts that made the weight parser slow, the
files a recipe names, and the file:line of a prompt file's values. Each CLI case gives one `error:` line
and the documented exit code, and leaves nothing behind; no image is ever black for want of a number."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import struct
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from diffgen.cli import app
from diffgen.errors import ConfigError, DiffgenError, InputError

from .helpers import ROOT, one_error_line, png_with_recipe

FAST = ["--steps", "1", "-n", "1", "--seed", "1"]
HUGE = "1" + "0" * 39  # 1e39 written out: finite as a Python float, infinite in float32




def lines_file(path: Path, *lines: object) -> Path:
    path.write_text("# a comment first, so the line numbers count\n"
                    + "".join((json.dumps(x) if isinstance(x, dict) else str(x)) + "\n" for x in lines))
    return path


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# --- class 5: no weight, guidance or setting past float32 reaches the sampler -----------------

def made(tmp: Path, name: str) -> str:
    makers = {
        "jsonl_weight": lambda: lines_file(tmp / "w.jsonl", {"prompt": f"a (cat:{HUGE})"}),
        "txt_weight": lambda: lines_file(tmp / "w.txt", "a dog", f"a (cat:{HUGE})"),
        "jsonl_guidance": lambda: lines_file(tmp / "g.jsonl", {"prompt": "a cat", "guidance": 1e300}),
        "recipe_weight": lambda: png_with_recipe(tmp / "rw.png", steps=1, prompt=f"a (cat:{HUGE})"),
        "recipe_guidance": lambda: png_with_recipe(tmp / "rg.png", steps=1, guidance=1e300),
        "recipe_batch": lambda: png_with_recipe(tmp / "rb.png", steps=1, batch_size=4096, batch_row=0),
        "recipe_long": lambda: png_with_recipe(tmp / "rl.png", steps=1, prompt="(a)" * 40_000),
    }
    return str(makers[name]())


SAMPLE_CASES = [
    ("weight_1e39", [f"a (cat:{HUGE})"], "'cat' is weighted 1e+39, but weights go from -100 to 100"),
    ("weight_minus_1e39", [f"a (cat:-{HUGE})"], "weighted -1e+39"),
    ("weight_1000", ["a (cat:1000)"], "weighted 1000"),
    ("weight_inf_times_0", [f"a ((cat:{'9' * 400}):0)"], "weighted nan"),
    ("nesting_1000_deep", ["(" * 1000 + "cat" + ")" * 1000], "more than 32 brackets open at once"),
    ("nesting_1000_unclosed", ["[" * 1000 + "cat"], "more than 32 brackets open at once"),
    ("negative_weight", ["a cat", "--negative", f"(dog:{HUGE})"], "negative prompt: 'dog' is weighted"),
    ("jsonl_weight", ["-f", "{jsonl_weight}"], "w.jsonl:2: prompt: 'cat' is weighted 1e+39"),
    ("txt_weight", ["-f", "{txt_weight}"], "w.txt:3: prompt: 'cat' is weighted 1e+39"),
    ("recipe_weight", ["--replay", "{recipe_weight}"], "prompt: 'cat' is weighted 1e+39"),
    ("guidance_1e30", ["a cat", "-g", "1e30"], "--guidance must be a finite number from 0 to 100"),
    ("jsonl_guidance", ["-f", "{jsonl_guidance}"], "g.jsonl:2: guidance must be a finite number from 0 to 100"),
    ("recipe_guidance", ["--replay", "{recipe_guidance}"], "guidance must be a finite number from 0 to 100"),
    ("xy_guidance", ["a cat", "--xy", "guidance=1,1e30"], "guidance must be a finite number from 0 to 100"),
    # class 6: a recipe's batch and --batch-size are held to what the model computes at once
    ("recipe_batch_4096", ["--replay", "{recipe_batch}"],
     "batch of 4,096 images; this 8 px model computes at most 2,048"),
    ("batch_size_5000", ["a cat", "--batch-size", "5000"], "--batch-size 5,000 is more than this 8 px model"),
    # class 8: a prompt long enough to be slow is refused before it is parsed
    ("prompt_120k", ["(a" * 40_000 + ")" * 40_000], "characters long; at most 20,000"),
    ("recipe_prompt_120k", ["--replay", "{recipe_long}"], "characters long; at most 20,000"),
]


@pytest.mark.parametrize("name, args, message", SAMPLE_CASES, ids=[c[0] for c in SAMPLE_CASES])
def test_hostile_values_are_one_line_exit_2_and_write_nothing(tiny_checkpoint, tmp_path, name, args, message):
    files = {a[1:-1]: made(tmp_path, a[1:-1]) for a in args if a.startswith("{")}
    out = tmp_path / "out"
    extra = FAST if "--replay" not in args else []
    result = run("sample", *[a.format(**files) for a in args], *extra, "-c", tiny_checkpoint, "-o", out)
    one_error_line(result, 2, message)
    assert not out.exists()


@pytest.fixture(scope="module")
def nan_checkpoints(tmp_path_factory, tiny_config) -> dict[str, Path]:
    """Tiny models whose U-Net, or whose upscaler, computes NaN (a diverged run's weights)."""
    from diffgen.checkpoint import save_model
    from diffgen.engine.model import build_model

    folder = tmp_path_factory.mktemp("nan")
    paths = {}
    upscaling = dataclasses.replace(tiny_config, upscale=dataclasses.replace(
        tiny_config.upscale, base_channels=8, channel_mult=(1,), crop=16))
    for name, config in (("unet", tiny_config), ("upscaler", upscaling)):
        torch.manual_seed(0)
        model = build_model(config)
        with torch.no_grad():
            broken = model.upscaler if name == "upscaler" else model.denoiser.net.conv_in
            for parameter in broken.parameters():
                parameter.fill_(float("nan"))
        paths[name] = folder / f"{name}.safetensors"
        save_model(paths[name], model)
    return paths


def test_a_model_that_computes_nan_writes_no_black_image(nan_checkpoints, tmp_path):
    message = "the model produced non-finite values (NaN or infinity) for 'a cat' (seed 1)"
    for name in ("unet", "upscaler"):
        out = tmp_path / name
        one_error_line(run("sample", "a cat", *FAST, "-q", "-c", nan_checkpoints[name], "-o", out), 1, message)
        assert not out.exists()  # no image, and no folder holding only a lock
    picture = tmp_path / "base.png"
    Image.new("RGB", (8, 8), "blue").save(picture)
    out = tmp_path / "upscaled"
    one_error_line(run("upscale", picture, "-c", nan_checkpoints["upscaler"], "-o", out), 1, "non-finite values")
    assert not out.exists()
    strip = tmp_path / "noise.png"
    one_error_line(run("noise", picture, "--denoise", "-c", nan_checkpoints["unet"], "-o", strip), 1,
                   "non-finite values")
    assert not strip.exists()


def test_no_non_finite_value_becomes_a_pixel():
    from diffgen.sampling.images import to_pil

    for bad in (float("nan"), float("inf"), -float("inf")):
        images = torch.zeros(2, 3, 4, 4)
        images[1, 2, 3, 3] = bad
        with pytest.raises(DiffgenError, match="non-finite values"):
            to_pil(images)
    assert to_pil(torch.full((1, 3, 2, 2), 5.0))[0].getpixel((0, 0)) == (255, 255, 255)  # finite: clamped


@pytest.mark.parametrize("section, key, value, message", [
    ("denoiser", "sigma_max", 1e39, "'denoiser.sigma_max' must be from 1e-05 to 10000"),
    ("denoiser", "sigma_data", 1e-50, "'denoiser.sigma_data' must be from 0.001 to 100"),  # 0 in float32
    ("denoiser", "p_std", 1e30, "'denoiser.p_std' must be from"),
    ("upscale", "sigma_max", 1e300, "'upscale.sigma_max' must be from"),
    ("train", "lr", 1e39, "'train.lr' must be from 0 to 1"),
    ("train", "layout_bias", 1e39, "'train.layout_bias' must be from 0 to 100"),
    ("train", "negative_sharpness", 1e39, "'train.negative_sharpness' must be from"),
    ("text", "context_length", 100_000, "'text.context_length' must be at most 1,024"),
    ("text", "vocab_size", 10**9, "'text.vocab_size' must be at most 1,000,000"),
    ("", "image_size", 2**20, "'image_size' must be at most 4,096"),
    ("unet", "num_res_blocks", 10**6, "'unet.num_res_blocks' must be at most 8"),
    ("unet", "channel_mult", [1] * 100_000, "'unet.channel_mult' takes at most 8 entries"),
    ("train", "batch_size", 10**7, "'train.batch_size' must be at most 65,536"),
    ("train", "seed", 2**70, "'train.seed' must be at most"),
])
def test_config_values_past_any_real_model_are_refused_by_name(section, key, value, message):
    from diffgen.config import config_from_dict

    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config_from_dict({section: {key: value}} if section else {key: value})
    assert time.perf_counter() - started < 1


def test_every_shipped_config_is_within_the_bounds():
    from diffgen.config import load_config

    for path in sorted((ROOT / "configs").glob("*.toml")):
        load_config(path)


# --- class 6: sizes taken on trust from files ---------------------------------------------------

def test_a_config_file_of_gigabytes_or_deep_nesting_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "big.toml"
    with open(big, "wb") as handle:
        handle.truncate(2 * 2**30)  # sparse: 2 GB that take no disk
    deep = tmp_path / "deep.toml"
    deep.write_text("image_size = " + "[" * 100_000 + "]" * 100_000 + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path, message in ((big, "larger than 1,024 kB: not a config"), (deep, "nested too deeply")):
        out = tmp_path / "run"
        one_error_line(run("train", tmp_path, "-o", out, "--config", path), 2, message)
        assert not out.exists()
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100


def with_config(source: Path, path: Path, edit) -> Path:
    """``source``'s tensors under its config as ``edit`` changes it (raw JSON, no checks), with a
    content hash that matches: only the sizes give the file away."""
    from diffgen.hashing import content_hash

    with safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(source))
    config = json.loads(metadata["config"])
    edit(config)
    metadata["config"] = json.dumps(config)
    metadata["content_hash"] = content_hash(tensors, metadata["config"])
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["text"].update(context_length=100_000), "'text.context_length' must be at most 1,024"),
    # within the bounds, not the file's: refused from the header, before even the meta-device build
    (lambda c: c["text"].update(context_length=1000),
     "text_encoder.clip.positional_embedding is [77, 32] in the file, the config asks for [1000, 32]"),
    (lambda c: c.update(image_size=4096) or c["unet"].update(attention_resolutions=[2048]),  # no U-Net weight shows it
     "text_encoder.clip.visual.positional_embedding is [5, 32] in the file"),
    (lambda c: c["layout"].update(width=4096, heads=4), "layout.position is not in the file"),
    (lambda c: c["upscale"].update(base_channels=8192, channel_mult=[1], crop=16),
     "upscaler.net.conv_in.weight is not in the file"),
], ids=["context_past_the_bound", "context_not_the_files", "image_size_not_the_files", "layout_not_in_the_file",
        "upscaler_not_in_the_file"])
def test_a_checkpoints_config_is_held_to_its_tensors_before_anything_is_built(tiny_checkpoint, tmp_path, edit,
                                                                             message):
    path = with_config(tiny_checkpoint, tmp_path / "edited.safetensors", edit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = tmp_path / "out"
    one_error_line(run("sample", "a cat", *FAST, "-c", path, "-o", out), 2, message)
    assert not out.exists()
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100


def test_deeply_nested_json_in_a_checkpoint_recipe_or_prompt_file_is_one_line(tiny_checkpoint, tmp_path):
    body = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    header = tmp_path / "deep.safetensors"
    header.write_bytes(struct.pack("<Q", len(body)) + body)
    info = PngImagePlugin.PngInfo()
    info.add_text("diffgen", "[" * 100_000)
    Image.new("RGB", (8, 8)).save(tmp_path / "deep.png", pnginfo=info)
    deep_lines = lines_file(tmp_path / "deep.jsonl", "[" * 15_000)
    out = tmp_path / "out"
    for args, message in ((["a cat", *FAST, "-c", header], "is not a safetensors file"),
                          (["--replay", tmp_path / "deep.png", "-c", tiny_checkpoint], "damaged diffgen recipe"),
                          (["-f", deep_lines, *FAST, "-c", tiny_checkpoint], "deep.jsonl:2: not valid JSON (nested")):
        one_error_line(run("sample", *args, "-o", out), 2, message)
        assert not out.exists()


def training_state(checkpoint: Path, folder: Path, edit, rehash: bool) -> Path:
    """A diffusion-stage state holding ``checkpoint``'s weights, its JSON edited by ``edit`` (and its
    hash recomputed, as anyone can, or deleted)."""
    from diffgen.checkpoint import load_model
    from diffgen.config import config_to_dict
    from diffgen.state import TrainingState, _info_hash, save_state, with_prefix

    model = load_model(checkpoint)
    json_path = save_state(folder, TrainingState("diffusion", 8, with_prefix(model.state_dict(), "model"),
                                                 {"config": config_to_dict(model.config), "data_position": 64}))
    info = json.loads(json_path.read_text())
    edit(info)
    if rehash:
        info["info_hash"] = _info_hash(info)
    else:
        del info["info_hash"]
    json_path.write_text(json.dumps(info))
    return json_path.with_suffix(".safetensors")


def test_a_training_state_used_as_a_checkpoint_is_held_to_its_tensors(tiny_checkpoint, tmp_path):
    wider = training_state(tiny_checkpoint, tmp_path / "a" / "state",
                           lambda info: info["config"]["unet"].update(base_channels=8192), rehash=True)
    unhashed = training_state(tiny_checkpoint, tmp_path / "b" / "state",
                              lambda info: info.update(data_position=0), rehash=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = tmp_path / "out"
    one_error_line(run("sample", "a cat", *FAST, "-c", wider, "-o", out), 2,
                   "does not match its config: denoiser.net.conv_in.weight is [16, 3, 3, 3] in the file")
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100  # 8192 channels: gigabytes
    one_error_line(run("sample", "a cat", *FAST, "-c", unhashed, "-o", out), 2, "its JSON has no recorded hash")
    assert not out.exists()


def test_an_upscale_input_whose_recipe_asks_for_a_huge_batch_keeps_no_recipe(tmp_path, tiny_config):
    from diffgen.checkpoint import load_model, save_model
    from diffgen.engine.model import build_model

    torch.manual_seed(0)
    path = tmp_path / "up.safetensors"
    save_model(path, build_model(dataclasses.replace(tiny_config, upscale=dataclasses.replace(
        tiny_config.upscale, base_channels=8, channel_mult=(1,), crop=16))))
    picture = png_with_recipe(tmp_path / "made.png", steps=1, batch_size=4096, batch_row=0,
                         model_hash=load_model(path).content_hash)
    result = run("upscale", picture, "-c", path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "recipe not kept (it was computed in a batch of 4,096, more than this model computes at once)" \
        in result.output
    with Image.open(tmp_path / "out" / "made.png") as image:
        assert image.size == (16, 16) and "diffgen" not in image.info


# --- class 7: a state JSON without its hash is an edited one ------------------------------------

def test_a_state_json_whose_hash_was_deleted_is_not_used(tiny_checkpoint, tmp_path):
    from diffgen.state import load_latest_state, read_state

    tensors = training_state(tiny_checkpoint, tmp_path / "state", lambda info: info.update(data_position=0),
                             rehash=False)
    said = []
    assert read_state(tmp_path / "state", tensors.with_suffix(".json")) == \
        "its JSON has no recorded hash (edited, or written by an older diffgen)"
    assert load_latest_state(tmp_path / "state", said.append) is None and "no recorded hash" in said[0]


# --- class 8: the weight parser is linear in the prompt -----------------------------------------

def test_the_weight_parser_takes_linear_time_and_keeps_its_results():
    from diffgen.engine.prompt_weights import parse_weights

    for prompt in ("(a" * 40_000 + ")" * 40_000, "[a" * 40_000):  # 97 s and 12 s before the bound
        started = time.perf_counter()
        with pytest.raises(InputError, match="more than 32 brackets open at once"):
            parse_weights(prompt)
        assert time.perf_counter() - started < 3  # refused at the 33rd bracket, not after seconds
    # the worst a prompt within the bounds can do: every chunk inside 31 brackets. Linear time: ten
    # times the chunks take about ten times as long (a quadratic parser would take a hundred), timed
    # as a ratio so that a busy machine does not fail it
    seconds = {}
    for repeats in (2_000, 20_000):
        started = time.perf_counter()
        chunks = parse_weights("[" * 31 + "(a)[b]" * repeats)
        seconds[repeats] = time.perf_counter() - started
    assert seconds[20_000] < 30 * max(seconds[2_000], 1e-3), seconds
    assert len(chunks) == 40_000 and chunks[0] == ("a", pytest.approx(1.1 / 1.1**31))
    assert parse_weights("(" * 32 + "cat" + ")" * 32) == [("cat", pytest.approx(1.1**32))]


# --- class 9: a recipe's files are checked before the folder, in words that do not tell ---------

def test_a_recipes_missing_unreadable_or_changed_input_gets_one_message_and_no_folder(tiny_checkpoint, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (8, 8), "green").save(init)
    digest = hashlib.sha256(init.read_bytes()).hexdigest()
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "notes.txt").write_text("not an image\n")
    named = {"missing": (tmp_path / "nope.png", digest), "folder": (tmp_path / "a-folder", digest),
             "not_an_image": (tmp_path / "notes.txt", digest), "device": ("/dev/zero", digest),
             "changed": (init, "0" * 64)}
    seen = set()
    for kind, (path, sha) in named.items():
        edit = {"init_image": str(path), "init_sha256": sha, "strength": 0.5}
        replay = png_with_recipe(tmp_path / f"{kind}.png", steps=1, edit=edit)
        out = tmp_path / f"out-{kind}"
        line = one_error_line(run("sample", "--replay", replay, "-c", tiny_checkpoint, "-o", out), 2,
                              "is missing, unreadable or changed since the recipe was made")
        seen.add(line.replace(str(path), "PATH"))
        assert not out.exists()
    assert len(seen) == 1  # the same words whatever the file is


# --- class 10: a prompt file's values are named by file and line ---------------------------------

@pytest.mark.parametrize("line, message", [
    ({"prompt": "a cat", "place": {"cat": [0, 0, 2, 1]}}, "the box of 'cat' must have"),
    ({"prompt": "a cat", "place": {"dog": [0, 0, 1, 1]}}, "the placed name 'dog' is not in the prompt"),
    ({"prompt": "a cat", "place": {"cat": [0, 0, 1, 1]}, "layout_strength": 1000}, "layout strength must be"),
    ({"prompt": "a cat", "seed": -1}, "seed must be a whole number"),
    ({"prompt": "a cat", "seed": 2**63 - 1, "n": 2}, "runs past the largest seed"),
    ({"prompt": "a cat", "steps": 0}, "steps must be a whole number from 1 to"),
    ({"prompt": "a cat", "sampler": "nope"}, "unknown sampler 'nope'"),
    ({"prompt": "a cat", "negative": f"(x:{HUGE})"}, "negative prompt: 'x' is weighted"),
], ids=["place_box", "place_name", "layout_strength", "seed", "seed_range", "steps", "sampler", "negative"])
def test_a_jsonl_lines_values_are_named_by_file_and_line(tmp_path, line, message):
    from diffgen.sampling.plan import plan_sample
    from diffgen.sampling.request import SampleRequest

    path = lines_file(tmp_path / "p.jsonl", {"prompt": "a dog"}, line)
    with pytest.raises(InputError) as caught:
        plan_sample([], path, None, 1, SampleRequest())
    assert str(caught.value).startswith(f"{path}:3: ") and message in str(caught.value)
