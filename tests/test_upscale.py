"""The upscaling stage: the network and its sampler, the training stage's exact resume, sampling at
twice the size (recipes, replay, --no-upscale, inpainting, the API) and `diffgen upscale`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from typer.testing import CliRunner

from diffgen.cli import app
from diffgen.config import UpscaleConfig, config_from_dict, config_to_dict, config_to_toml, load_config
from diffgen.engine.upscaler import Upscaler, enlarge, reduce, upscale, upscale_generator
from diffgen.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
TINY_UPSCALE = {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "crop": 16}


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def tiny_upscale_config(**train: object):
    """configs/tiny.toml (8 px) with a small upscaler (to 16 px) and ``train`` changes."""
    data = config_to_dict(load_config(ROOT / "configs" / "tiny.toml"))
    data["upscale"].update(TINY_UPSCALE)
    data["train"].update(train)
    return config_from_dict(data)


def nonzero(module: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised output layers get small random weights, so the output depends on the input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.fixture(scope="module")
def upscaling_checkpoint(tmp_path_factory) -> Path:
    """A tiny model with an upscaler whose zero-initialised layers are made non-zero."""
    from diffgen.checkpoint import save_model
    from diffgen.engine.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_upscale_config())
    nonzero(model.denoiser)
    nonzero(model.upscaler, seed=1)
    path = tmp_path_factory.mktemp("upscaling") / "tiny-up.safetensors"
    save_model(path, model)
    return path


def write_folder(folder: Path, count: int, size: int) -> Path:
    """Coloured discs on white at ``size`` px with .txt captions."""
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.new("RGB", (size, size), "white")
        r = size // 4 + i % 3
        ImageDraw.Draw(image).ellipse([i % 5, i % 4, i % 5 + 2 * r, i % 4 + 2 * r], fill=(40 * (i % 6), 90, 200))
        image.save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a disc number {i % 3}\n")
    return folder


# --- the network and its sampler -----------------------------------------------------------------

def test_enlarge_and_reduce_are_a_2x_pair_and_reduce_undoes_enlarge_on_flat_images():
    flat = torch.full((2, 3, 8, 8), 0.25)
    assert enlarge(flat).shape == (2, 3, 16, 16)
    assert torch.allclose(reduce(enlarge(flat)), flat)
    blocks = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert reduce(blocks)[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4


def test_upscale_doubles_any_side_and_depends_only_on_each_images_seed():
    torch.manual_seed(0)
    upscaler = Upscaler(UpscaleConfig(**{**TINY_UPSCALE, "channel_mult": (1, 2, 2)})).eval()
    nonzero(upscaler)
    base = torch.rand(3, 3, 7, 5) * 2 - 1  # sides the network's multiple (4) does not divide
    with torch.inference_mode():
        batch = upscale(upscaler, base, [upscale_generator(s) for s in (3, 4, 5)])
        alone = upscale(upscaler, base[1:2], [upscale_generator(4)])
        again = upscale(upscaler, base[1:2], [upscale_generator(4)])
        other = upscale(upscaler, base[1:2], [upscale_generator(9)])
    assert batch.shape == (3, 3, 14, 10) and batch.abs().max() <= 1
    assert torch.equal(alone, again)
    assert torch.allclose(batch[1:2], alone, atol=1e-5)  # the same seed, whatever its batch
    assert not torch.allclose(alone, other, atol=1e-3)


def test_a_fresh_upscaler_is_the_exact_denoiser_of_gaussian_detail_and_the_sampler_solves_its_ode():
    """Its output layer starts at zero, so D(r, sigma) = c_skip r: the exact denoiser when the
    residual is Gaussian with variance sigma_data^2. The probability-flow ODE is then
    dr/dsigma = r sigma / (sigma^2 + sigma_data^2), solved by r(sigma) ~ sqrt(sigma^2 + sigma_data^2):
    from noise of spread sigma_max, the upscale's detail ends with spread
    sigma_max sigma_data / sqrt(sigma_max^2 + sigma_data^2) (DPM-Solver++(2M) is within 7% of it
    at 8 steps, 0.3% at 32; the bound leaves room for the 0.6% sampling error of the spread)."""
    cfg = UpscaleConfig(**TINY_UPSCALE, sigma_data=0.05, sigma_max=2.0)
    upscaler = Upscaler(cfg).eval()
    base = torch.zeros(4, 3, 16, 16)
    with torch.inference_mode():
        high = upscale(upscaler, base, [upscale_generator(s) for s in range(4)], steps=32, aug_sigma=0.0)
    exact = cfg.sigma_max * cfg.sigma_data / (cfg.sigma_max**2 + cfg.sigma_data**2) ** 0.5
    assert abs(high.std().item() / exact - 1) < 0.02
    assert abs(high.mean().item()) < 0.01


def test_the_loss_at_initialisation_is_the_edm_unit_target_variance():
    """With the network at zero, D = c_skip x and E lambda |D - r|^2 = 1 at every sigma when the
    residual r has variance sigma_data^2 (EDM's effective target has unit variance): a Gaussian
    image scaled so that its residual has that spread checks the preconditioning and the weight."""
    cfg = UpscaleConfig(**TINY_UPSCALE, sigma_data=0.1)
    upscaler = Upscaler(cfg)
    high = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    residual = high - enlarge(reduce(high))
    high = high * (cfg.sigma_data / residual.pow(2).mean().sqrt())  # the residual is linear in the image
    loss = upscaler.loss(high, torch.Generator().manual_seed(1))
    assert loss.shape == (64,)
    assert abs(loss.mean().item() - 1.0) < 0.05


def test_upscale_config_is_checked():
    with pytest.raises(ConfigError, match="upscale_steps"):
        config_from_dict({"train": {"upscale_steps": 5}})
    for bad, key in ((("crop", 6),), "upscale.crop"), ((("crop", 32),), "upscale.crop"), \
            ((("aug_sigma", float("nan")),), "upscale.aug_sigma"), ((("base_channels", 7),), "upscale.base_channels"):
        data = config_to_dict(tiny_upscale_config())
        data["upscale"].update(dict(bad))
        with pytest.raises(ConfigError, match=key):
            config_from_dict(data)
    cfg = tiny_upscale_config()
    assert load_config_text(config_to_toml(cfg)) == cfg


def load_config_text(text: str):
    import tomllib

    return config_from_dict(tomllib.loads(text))


# --- training ------------------------------------------------------------------------------------

def train(data: Path, out: Path, config: Path, init: Path, *extra: str):
    return cli("train", data, "-o", out, "--config", config, "--init", init, "--device", "cpu", "-q", *extra)


def write_config(path: Path, **train_changes: object) -> Path:
    path.write_text(config_to_toml(tiny_upscale_config(steps=0, checkpoint_every=2, **train_changes)))
    return path


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    """A tiny model without an upscaler, for --init."""
    from diffgen.checkpoint import save_model
    from diffgen.engine.model import build_model

    torch.manual_seed(0)
    model = build_model(load_config(ROOT / "configs" / "tiny.toml"))
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    save_model(path, model)
    return path


def test_the_upscaling_stage_adds_an_upscaler_to_a_model_and_resumes_exactly(tmp_path, base_checkpoint):
    data = write_folder(tmp_path / "data", 12, 16)
    whole = train(data, tmp_path / "whole", write_config(tmp_path / "four.toml", upscale_steps=4), base_checkpoint)
    assert whole.exit_code == 0, whole.output
    half = train(data, tmp_path / "part", write_config(tmp_path / "two.toml", upscale_steps=2), base_checkpoint)
    assert half.exit_code == 0, half.output
    resumed = cli("train", data, "-o", tmp_path / "part", "--config", tmp_path / "four.toml", "--resume",
                  "--device", "cpu", "-q")
    assert resumed.exit_code == 0, resumed.output
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "part"))
    upscaler = [k for k in a if k.startswith("upscaler.")]
    assert upscaler and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(base_checkpoint)
    assert all(torch.equal(a[k], base[k]) for k in base)  # the rest of the model is the --init one's
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["upscale_steps"] == 4
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("stage") == "upscale"][-1] == 4


def test_the_upscaling_stage_needs_images_of_twice_the_size(tmp_path, base_checkpoint):
    small = write_folder(tmp_path / "small", 12, 12)  # under 2 x 8 px
    result = train(small, tmp_path / "run", write_config(tmp_path / "c.toml", upscale_steps=2), base_checkpoint)
    assert result.exit_code == 2
    assert "at least 16 px" in result.output and "Traceback" not in result.output


# --- sampling --------------------------------------------------------------------------------------

def sample(ckpt: Path, out: Path, *args):
    return cli("sample", "-c", ckpt, "-o", out, "--steps", "2", "--seed", "5", "-q", *args)


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("0*.png"))


def test_sample_upscales_by_default_and_the_recipe_replays_byte_for_byte(tmp_path, upscaling_checkpoint):
    assert sample(upscaling_checkpoint, tmp_path / "up", "a disc", "-n", "3", "--batch-size", "2").exit_code == 0
    assert sample(upscaling_checkpoint, tmp_path / "base", "a disc", "-n", "3", "--batch-size", "2",
                  "--no-upscale").exit_code == 0
    up, base = pngs(tmp_path / "up"), pngs(tmp_path / "base")
    assert [Image.open(p).size for p in up] == [(16, 16)] * 3 and [Image.open(p).size for p in base] == [(8, 8)] * 3
    recipe = json.loads(Image.open(up[2]).text["diffgen"])
    assert recipe["upscale"] is True and recipe["width"] == 16 and "Size: 16x16" in Image.open(up[2]).text["parameters"]
    assert json.loads(Image.open(base[0]).text["diffgen"])["upscale"] is False
    replayed = cli("sample", "-c", upscaling_checkpoint, "--replay", up[2], "-o", tmp_path / "replay", "-q")
    assert replayed.exit_code == 0, replayed.output
    assert (tmp_path / "replay" / up[2].name).read_bytes() == up[2].read_bytes()
    # the upscale of the base PNGs is the same picture, byte for byte, recipe included
    done = cli("upscale", "-c", upscaling_checkpoint, *base, "-o", tmp_path / "later")
    assert done.exit_code == 0, done.output
    for made in pngs(tmp_path / "later"):
        twin = tmp_path / "up" / made.name
        assert Image.open(made).tobytes() == Image.open(twin).tobytes()
        assert Image.open(made).text["diffgen"] == Image.open(twin).text["diffgen"]


def test_inpainting_keeps_the_known_region_at_twice_the_size(tmp_path, upscaling_checkpoint):
    picture = Image.new("RGB", (16, 16), (200, 40, 40))
    ImageDraw.Draw(picture).rectangle([0, 0, 7, 15], fill=(20, 200, 90))
    picture.save(tmp_path / "in.png")
    Image.new("L", (16, 16), 0).save(tmp_path / "keep-all.png")  # black: keep everything
    result = sample(upscaling_checkpoint, tmp_path / "out", "a disc", "-n", "1", "--init-image", tmp_path / "in.png",
                    "--mask", tmp_path / "keep-all.png", "--strength", "1")
    assert result.exit_code == 0, result.output
    (made,) = pngs(tmp_path / "out")
    assert Image.open(made).size == (16, 16)
    assert Image.open(made).convert("RGB").tobytes() == picture.tobytes()


def test_the_api_upscales_like_the_cli(tmp_path, upscaling_checkpoint):
    import diffgen

    model = diffgen.load(upscaling_checkpoint, device="cpu")
    assert model.has_upscaler
    images = model.sample("a disc", n=2, seed=5, steps=2)
    small = model.sample("a disc", n=2, seed=5, steps=2, upscale=False)
    assert [i.size for i in images] == [(16, 16)] * 2 and [i.size for i in small] == [(8, 8)] * 2
    assert sample(upscaling_checkpoint, tmp_path / "cli", "a disc", "-n", "2").exit_code == 0
    for image, path in zip(images, pngs(tmp_path / "cli"), strict=True):
        assert image.tobytes() == Image.open(path).tobytes()


def test_a_prompt_file_line_can_turn_the_upscale_off(tmp_path, upscaling_checkpoint):
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "a disc", "upscale": false}\n{"prompt": "a disc number 1"}\n')
    assert sample(upscaling_checkpoint, tmp_path / "out", "-f", lines, "-n", "1").exit_code == 0
    assert [Image.open(p).size for p in pngs(tmp_path / "out")] == [(8, 8), (16, 16)]


def test_a_model_without_an_upscaler_samples_and_records_as_before(tmp_path, base_checkpoint):
    assert sample(base_checkpoint, tmp_path / "out", "a disc", "-n", "1").exit_code == 0
    (made,) = pngs(tmp_path / "out")
    assert Image.open(made).size == (8, 8) and "upscale" not in json.loads(Image.open(made).text["diffgen"])
    result = cli("upscale", "-c", base_checkpoint, made, "-o", tmp_path / "up")
    assert result.exit_code == 2 and "no upscaler" in result.output


# --- diffgen upscale's inputs ----------------------------------------------------------------------

def test_upscale_enlarges_any_picture_without_a_recipe(tmp_path, upscaling_checkpoint):
    Image.new("RGBA", (11, 6), (10, 20, 30, 128)).save(tmp_path / "odd.png")
    Image.new("RGB", (9, 9), "blue").save(tmp_path / "photo.jpg")
    result = cli("upscale", "-c", upscaling_checkpoint, tmp_path / "odd.png", tmp_path / "photo.jpg",
                 "-o", tmp_path / "out", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "odd.png").size == (22, 12)
    assert Image.open(tmp_path / "out" / "photo.png").size == (18, 18)
    assert "diffgen" not in Image.open(tmp_path / "out" / "photo.png").text
    again = cli("upscale", "-c", upscaling_checkpoint, tmp_path / "odd.png", "-o", tmp_path / "again", "--seed", "3")
    assert again.exit_code == 0
    assert (tmp_path / "again" / "odd.png").read_bytes() == (tmp_path / "out" / "odd.png").read_bytes()


def bomb(path: Path) -> Path:
    """A PNG whose header claims 100,000 x 100,000 pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case", ["not an image", "huge header", "folder", "symlink out", "too large", "exists"])
def test_bad_inputs_to_upscale_are_one_line_errors_with_exit_2(tmp_path, upscaling_checkpoint, case):
    out = tmp_path / "out"
    out.mkdir()
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), "red").save(good)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    if case == "not an image":
        target = tmp_path / "notes.png"
        target.write_text("hello")
    elif case == "huge header":
        target = bomb(tmp_path / "bomb.png")
    elif case == "folder":
        target = tmp_path / "folder"
        target.mkdir()
    elif case == "symlink out":
        target = good
        os.symlink(victim, out / "good.png")  # a planted link where the output would go
    elif case == "too large":
        target = tmp_path / "large.png"
        Image.new("RGB", (1024, 1024), "red").save(target)
    else:
        target = good
        (out / "good.png").write_bytes(b"earlier")
    result = cli("upscale", "-c", upscaling_checkpoint, target, "-o", out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert victim.read_text() == "keep me"
    assert not [p for p in out.iterdir() if p.name not in ("good.png", ".diffgen.lock")]


def test_an_upscale_never_overwrites_its_input(tmp_path, upscaling_checkpoint):
    picture = tmp_path / "me.png"
    Image.new("RGB", (8, 8), "red").save(picture)
    result = cli("upscale", "-c", upscaling_checkpoint, picture, "-o", tmp_path, "--overwrite")
    assert result.exit_code == 2 and "overwritten by its own upscale" in result.output
    assert Image.open(picture).size == (8, 8)


def test_a_replay_cannot_drop_the_upscale(tmp_path, upscaling_checkpoint):
    assert sample(upscaling_checkpoint, tmp_path / "a", "a disc", "-n", "1").exit_code == 0
    (made,) = pngs(tmp_path / "a")
    result = cli("sample", "-c", upscaling_checkpoint, "--replay", made, "--no-upscale", "-o", tmp_path / "b")
    assert result.exit_code == 2 and "--no-upscale" in result.output


def test_tasks_with_and_without_the_upscale_are_batched_apart():
    from diffgen.sampling.tasks import ImageTask

    a, b = ImageTask(0, "x", 0), dataclasses.replace(ImageTask(1, "x", 1), upscale=False)
    assert a.batch_key() != b.batch_key()


def test_emoji_scenes_render_at_128_px_but_never_enlarge_the_glyphs(tmp_path):
    from diffgen.emoji.dataset import build_emoji_dataset
    from diffgen.emoji.scenes import find_font
    from diffgen.errors import DiffgenError, InputError

    try:
        find_font()
    except DiffgenError:
        pytest.skip("Noto Color Emoji is not installed (.ci/run installs it)")
    summary = build_emoji_dataset(tmp_path / "big", count=3, size=128, seed=1)
    assert summary["size"] == 128 and Image.open(tmp_path / "big" / "images" / "000000.png").size == (128, 128)
    with pytest.raises(InputError, match="larger than the font's"):
        build_emoji_dataset(tmp_path / "huge", count=3, size=256)


def test_a_resumed_run_may_change_how_the_upscaler_samples_but_not_how_it_trains(tmp_path, base_checkpoint):
    data = write_folder(tmp_path / "data", 12, 16)
    assert train(data, tmp_path / "run", write_config(tmp_path / "a.toml", upscale_steps=2), base_checkpoint
                 ).exit_code == 0
    sampling = tiny_upscale_config(steps=0, checkpoint_every=2, upscale_steps=2)
    sampling = dataclasses.replace(sampling, upscale=dataclasses.replace(sampling.upscale, steps=2, sigma_max=1.0))
    (tmp_path / "b.toml").write_text(config_to_toml(sampling))
    again = cli("train", data, "-o", tmp_path / "run", "--config", tmp_path / "b.toml", "--resume", "--device", "cpu",
                "-q")
    assert again.exit_code == 0, again.output
    from diffgen.checkpoint import read_checkpoint

    _, config, _ = read_checkpoint(tmp_path / "run" / "model.safetensors")
    assert (config.upscale.steps, config.upscale.sigma_max) == (2, 1.0)
    training = dataclasses.replace(sampling, upscale=dataclasses.replace(sampling.upscale, p_mean=0.0))
    (tmp_path / "c.toml").write_text(config_to_toml(training))
    refused = cli("train", data, "-o", tmp_path / "run", "--config", tmp_path / "c.toml", "--resume", "--device",
                  "cpu", "-q")
    assert refused.exit_code == 2 and "another config" in refused.output


def test_strength_0_returns_the_input_at_twice_the_size(tmp_path, upscaling_checkpoint):
    large = Image.new("RGB", (16, 16), (200, 40, 40))
    ImageDraw.Draw(large).rectangle([0, 0, 7, 15], fill=(20, 200, 90))
    large.save(tmp_path / "large.png")
    large.resize((8, 8), Image.Resampling.BOX).save(tmp_path / "small.png")
    for name in ("large", "small"):
        result = sample(upscaling_checkpoint, tmp_path / name, "a disc", "-n", "1", "--init-image",
                        tmp_path / f"{name}.png", "--strength", "0")
        assert result.exit_code == 0, result.output
    (from_large,) = pngs(tmp_path / "large")
    (from_small,) = pngs(tmp_path / "small")
    assert Image.open(from_large).tobytes() == large.tobytes()  # the input itself
    assert Image.open(from_small).size == (16, 16)  # the base-size input, upscaled like any base image
    upscaled = cli("upscale", "-c", upscaling_checkpoint, tmp_path / "small.png", "-o", tmp_path / "u", "--seed", "5")
    assert upscaled.exit_code == 0
    assert Image.open(from_small).tobytes() == Image.open(tmp_path / "u" / "small.png").tobytes()
