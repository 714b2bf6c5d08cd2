"""Adapters (diffgen train --adapter, sample --adapter / <lora:...>, Model.sample(adapters=...)) on
the tiny model: the file, exact resume, weight 0 = the base model's pixels, two adapters at once,
replay and its refusals, another base model refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from .helpers import cli, make_shapes_folder, one_error_line, randomize_zero_params, weights

STEPS = "6"


def concept_folder(folder: Path, word: str, count: int = 8) -> Path:
    make_shapes_folder(folder, count=count)
    for caption in folder.glob("*.txt"):
        caption.write_text(f"a {word}\na {word} on white\n")
    return folder


def train(data: Path, out: Path, base: Path | None, kind: str, *extra: str):
    args = ["train", str(data), "--adapter", kind, "-o", str(out), "--steps", STEPS, "--device", "cpu", "-q"]
    return cli(*args, *(["--init", str(base)] if base is not None else []), *extra)


@pytest.fixture(scope="module")
def taught(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """Two adapters of the tiny checkpoint: a LoRA for 'zorblat' and both kinds for 'quixel'."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for kind, word in (("lora", "zorblat"), ("both", "quixel")):
        result = train(concept_folder(root / word, word), root / f"run-{word}", tiny_checkpoint, kind)
        assert result.exit_code == 0, result.output
        out[word] = root / f"run-{word}" / "adapter.safetensors"
    return out


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def sample(out: Path, checkpoint: Path, prompt: str, *extra: str) -> list[Path]:
    result = cli("sample", prompt, "-c", str(checkpoint), "-n", "2", "--seed", "3", "--steps", "4",
                 "-o", str(out), "-q", "--device", "cpu", *extra)
    assert result.exit_code == 0, result.output
    return sorted(out.glob("*.png"))


def test_the_file_is_small_and_names_its_base_kind_rank_word_and_recipe(taught, tiny_checkpoint):
    from diffgen.checkpoint import load_model

    path = taught["quixel"]
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        keys = list(handle.keys())
    assert meta["format"] == "diffgen-adapter" and meta["kind"] == "both" and meta["rank"] == "4"
    assert meta["base_model_hash"] == load_model(tiny_checkpoint).content_hash
    assert json.loads(meta["trigger"]) == ["quixel"]  # inferred: the word every caption shares
    assert json.loads(meta["recipe"])["steps"] == int(STEPS)
    assert "vectors" in keys and any(k.startswith("lora.") for k in keys)
    assert path.stat().st_size < 2 * 2**20
    assert not list(path.parent.glob("model.safetensors"))  # an adapter run ships no model


def test_resume_is_exact(tmp_path, tiny_checkpoint, taught):
    data = concept_folder(tmp_path / "quixel", "quixel")
    out = tmp_path / "run"
    first = cli("train", str(data), "--adapter", "both", "-o", str(out), "--steps", "3", "--device", "cpu",
                "-q", "--init", str(tiny_checkpoint))
    assert first.exit_code == 0, first.output
    again = cli("train", str(data), "--adapter", "both", "-o", str(out), "--steps", STEPS, "--device", "cpu",
                "-q", "--resume")
    assert again.exit_code == 0, again.output
    other = cli("train", str(data), "--adapter", "lora", "-o", str(out), "--steps", STEPS, "--device", "cpu",
                "-q", "--resume")
    one_error_line(other, 2, "other adapter settings")
    straight, resumed = weights(taught["quixel"]), weights(out / "adapter.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not torch.equal(straight["vectors"], weights(tmp_path / "run" / "state" /
                                                        "state-adapter-00000003.safetensors")["adapter.vectors"])


def test_weight_zero_gives_the_base_models_pixels_and_weight_one_does_not(tmp_path, taught, tiny_checkpoint):
    base = sample(tmp_path / "base", tiny_checkpoint, "a zorblat")
    zero = sample(tmp_path / "zero", tiny_checkpoint, "a zorblat", "--adapter", f"{taught['zorblat']}:0")
    one = sample(tmp_path / "one", tiny_checkpoint, "a zorblat", "--adapter", str(taught["zorblat"]))
    for b, z, o in zip(base, zero, one):
        assert pixels(b).tobytes() == pixels(z).tobytes()
        assert pixels(b).tobytes() != pixels(o).tobytes()


def test_two_adapters_load_together_and_the_recipe_replays(tmp_path, taught, tiny_checkpoint):
    folder = tmp_path / "adapters"
    folder.mkdir()
    shutil.copy(taught["zorblat"], folder / "zorblat.safetensors")
    shutil.copy(taught["quixel"], folder / "quixel.safetensors")
    one = sample(tmp_path / "one", tiny_checkpoint, "a quixel", "--adapter-dir", str(folder),
                 "--adapter", f"{folder / 'quixel.safetensors'}:0.8")
    both = sample(tmp_path / "both", tiny_checkpoint, "a quixel <lora:zorblat:0.5>", "--adapter-dir", str(folder),
                  "--adapter", f"{folder / 'quixel.safetensors'}:0.8")
    assert pixels(one[0]).tobytes() != pixels(both[0]).tobytes()
    recipe = json.loads(Image.open(both[0]).info["diffgen"])
    assert recipe["prompt"] == "a quixel"  # the tag is taken out of the text the model reads
    assert [(a["name"], a["weight"]) for a in recipe["adapters"]] == [("quixel", 0.8), ("zorblat", 0.5)]
    replayed = cli("sample", "--replay", str(both[0]), "-c", str(tiny_checkpoint), "-o", str(tmp_path / "re"),
                   "-q", "--device", "cpu", "--adapter-dir", str(folder))
    assert replayed.exit_code == 0, replayed.output
    assert pixels(next((tmp_path / "re").glob("*.png"))).tobytes() == pixels(both[0]).tobytes()

    (folder / "zorblat.safetensors").write_bytes((folder / "quixel.safetensors").read_bytes())  # changed
    changed = cli("sample", "--replay", str(both[0]), "-c", str(tiny_checkpoint), "-o", str(tmp_path / "re2"),
                  "-q", "--device", "cpu", "--adapter-dir", str(folder))
    one_error_line(changed, 2, "has changed")
    (folder / "zorblat.safetensors").unlink()
    missing = cli("sample", "--replay", str(both[0]), "-c", str(tiny_checkpoint), "-o", str(tmp_path / "re3"),
                  "-q", "--device", "cpu", "--adapter-dir", str(folder))
    one_error_line(missing, 2, "not found")


def test_another_base_model_is_refused_in_one_line(tmp_path, taught, tiny_config):
    from diffgen.checkpoint import save_model
    from diffgen.engine.model import build_model

    torch.manual_seed(1)
    other = build_model(tiny_config)
    randomize_zero_params(other.denoiser, seed=1)
    save_model(tmp_path / "other.safetensors", other)
    result = cli("sample", "a zorblat", "-c", str(tmp_path / "other.safetensors"), "-n", "1", "--steps", "2",
                 "-o", str(tmp_path / "out"), "-q", "--device", "cpu", "--adapter", str(taught["zorblat"]))
    one_error_line(result, 2, "was trained for model")


def test_bad_adapter_inputs_are_one_line_exit_2(tmp_path, taught, tiny_checkpoint):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    for extra, message in ((["--adapter", str(junk)], "not a readable safetensors"),
                           (["--adapter", str(tmp_path / "none.safetensors")], "not found"),
                           (["--adapter", f"{taught['zorblat']}:nan"], "weight")):
        result = cli("sample", "a cat", "-c", str(tiny_checkpoint), "-n", "1", "--steps", "2",
                     "-o", str(tmp_path / "o"), "-q", "--device", "cpu", *extra)
        one_error_line(result, 2, message)
    tag = cli("sample", "a cat <lora:../x:1>", "-c", str(tiny_checkpoint), "-o", str(tmp_path / "o"), "-q")
    one_error_line(tag, 2, "without a path")


def test_the_api_takes_adapters_and_gives_the_clis_pixels(tmp_path, taught, tiny_checkpoint):
    import diffgen

    model = diffgen.load(tiny_checkpoint, device="cpu")
    cli_images = sample(tmp_path / "cli", tiny_checkpoint, "a zorblat", "--adapter", f"{taught['zorblat']}:0.7")
    images = model.sample("a zorblat", n=2, seed=3, steps=4, adapters=[(taught["zorblat"], 0.7)])
    assert [np.asarray(i).tobytes() for i in images] == [pixels(p).tobytes() for p in cli_images]
    assert model.diffusion_model.adapters == []  # the call's adapters are gone after it
    plain = model.sample("a zorblat", n=2, seed=3, steps=4)
    assert np.asarray(plain[0]).tobytes() != np.asarray(images[0]).tobytes()
    folder = tmp_path / "adapters"
    folder.mkdir()
    shutil.copy(taught["zorblat"], folder / "zorblat.safetensors")
    tagged = model.sample("a zorblat <lora:zorblat:0.7>", n=2, seed=3, steps=4, adapter_dir=folder)
    assert [np.asarray(i).tobytes() for i in tagged] == [np.asarray(i).tobytes() for i in images]
    # without adapter_dir the tag is text (a server's client cannot make it open a file)
    literal = model.sample("a zorblat <lora:zorblat:0.7>", n=1, seed=3, steps=4)
    assert "adapters" not in json.loads(literal[0].info["diffgen"])


def test_an_embedding_changes_only_prompts_with_its_word(taught, tiny_checkpoint):
    from diffgen.adapters import AdapterSpec, attach_adapters, detach_adapters
    from diffgen.checkpoint import load_model

    model = load_model(tiny_checkpoint, image_tower=False)
    before = model.text_encoder.encode(["a cat", "a quixel"]).tokens
    attached = attach_adapters(model, [AdapterSpec(taught["quixel"])])
    after = model.text_encoder.encode(["a cat", "a quixel"]).tokens
    detach_adapters(model, attached)
    assert torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])
    assert torch.equal(model.text_encoder.encode(["a cat", "a quixel"]).tokens, before)  # detached: the base


def test_trigger_must_be_found(tmp_path, tiny_checkpoint):
    data = make_shapes_folder(tmp_path / "shapes", count=8)  # captions name colours and shapes: none shared
    result = train(data, tmp_path / "run", tiny_checkpoint, "lora")
    one_error_line(result, 2, "--trigger")
    one_error_line(train(data, tmp_path / "run1", tiny_checkpoint, "lora", "--trigger", "zorblat"), 2, "no caption")
    one_error_line(train(data, tmp_path / "run2", tiny_checkpoint, "lora", "--config", "tiny"), 2, "--config")


def test_a_scene_fits_the_pictures_foreground_into_its_box_and_masks_the_other_object():
    from diffgen.training.adapter_scenes import compose, foreground, masked_loss

    image = torch.full((3, 32, 32), -0.5)
    image[:, 20:30, 4:12] = 0.8  # a 10 x 8 thing on a plain background
    assert foreground(image, torch.full((3, 1, 1), -0.5)) == (20, 30, 4, 12)
    canvas, mask = compose(image, (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0))
    inside = (canvas - (-0.5)).abs().amax(dim=0) > 0.1
    rows, cols = inside.any(dim=1).nonzero(), inside.any(dim=0).nonzero()
    assert int(rows[0]) >= 0 and int(rows[-1]) < 16 and int(cols[0]) >= 16  # within the top-right box
    assert int(rows[-1]) - int(rows[0]) + 1 == 16  # grown to the box's height, shape kept (10:8)
    assert 12 <= int(cols[-1]) - int(cols[0]) + 1 <= 14
    assert mask[0, 16:, :16].sum() == 0 and mask.sum() == 32 * 32 - 16 * 16
    # a picture without a plain background keeps its whole frame
    noisy = torch.rand(3, 32, 32) * 2 - 1
    assert foreground(noisy, noisy[:, :1, :1]) == (0, 32, 0, 32)
    # the loss counts only the mask's pixels: an error inside the other object's box costs nothing
    target, guess = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    guess[..., 16:, :16] = 5.0
    assert float(masked_loss(guess, target, torch.ones(1), mask[None])[0]) == 0.0
    guess[..., :16, 16:] = 1.0
    assert float(masked_loss(guess, target, torch.ones(1), mask[None])[0]) == pytest.approx(256 / 768)


def test_scenes_name_the_word_and_the_other_object_with_their_boxes(tiny_checkpoint):
    from diffgen.checkpoint import load_model
    from diffgen.training.adapter_scenes import OTHERS, SceneMaker

    model = load_model(tiny_checkpoint, torch.device("cpu"))
    maker = SceneMaker(model, "otter")
    images, captions, masks, placements = maker.make(torch.rand(6, 3, 16, 16) * 2 - 1,
                                                     torch.Generator().manual_seed(0))
    assert images.shape == (6, 3, 16, 16) and masks.shape == (6, 1, 16, 16)
    for caption, placed, mask in zip(captions, placements, masks):
        assert "an otter" in caption and any(other in caption for other in OTHERS)
        names = sorted(caption[p.start:p.end] for p in placed)
        assert "otter" in names and len(names) == 2
        assert 0 < float(mask.mean()) < 1  # the other object's box is left out of the loss
    again = maker.make(torch.rand(6, 3, 16, 16) * 2 - 1, torch.Generator().manual_seed(0))[1]
    assert again == captions  # the step's generator decides: a resumed run makes the same scenes
    # a word that holds another object's name ("a catfish" holds "a cat") is still placed by its own span
    fish = SceneMaker(model, "catfish")
    for relation, other in fish.options():
        scene = fish.scene(relation, other)
        names = {scene.caption[p.start:p.end]: p.box for p in scene.placements}
        assert set(names) == {"catfish", other.split(" ", 1)[1]}, scene.caption
        assert names["catfish"] == scene.new_box


def test_scenes_share_and_prior_weight_are_checked(tmp_path, tiny_checkpoint):
    data = concept_folder(tmp_path / "d", "zorblat")
    result = train(data, tmp_path / "r", tiny_checkpoint, "lora", "--scenes", "1.5")
    one_error_line(result, 2, "--scenes must be from 0 to 1")
    result = train(data, tmp_path / "r", tiny_checkpoint, "lora", "--prior-weight", "-1")
    one_error_line(result, 2, "--prior-weight must be from 0 to 100")


def test_sigterm_saves_the_adapters_state_after_the_step(tmp_path, tiny_checkpoint):
    import signal
    import subprocess
    import sys

    from diffgen.state import load_latest_state

    from .helpers import wait_for

    data, out = concept_folder(tmp_path / "d", "zorblat"), tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "diffgen", "train", str(data), "--adapter", "lora", "-o", str(out),
                             "--init", str(tiny_checkpoint), "--steps", "100000", "--device", "cpu", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and stderr.strip().splitlines()[-1] == "terminated", stderr
    state = load_latest_state(out / "state")
    assert state is not None and state.stage == "adapter" and 0 < state.step < 100000
