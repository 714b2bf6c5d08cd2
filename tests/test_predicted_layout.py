"""The layout predictor (engine/layout_net.py, training/layout_stage.py) and sampling with the layout
it reads from the prompt (sampling/predicted_layout.py): its targets and loss against hand-computed
values, a tiny predictor that learns which word goes where (also for word pairs it never saw), the
layout stage's run with exact resume, and sampling that lays out two-object prompts while leaving
one-object prompts byte for byte as they were."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from diffgen.checkpoint import load_model, save_model
from diffgen.config import LayoutConfig, config_from_dict, config_to_dict, config_to_toml
from diffgen.engine.layout_net import RELAXED_SHARE, LayoutGuess, LayoutTargets, layout_loss
from diffgen.engine.model import build_model
from diffgen.engine.regions import TokenSpans
from diffgen.sampling.predicted_layout import predict_layout

from .helpers import pngs, randomize_zero_params, run, sample, train_config

NOUNS = ("dog", "cat", "owl", "fox", "car", "tree", "star", "moon")
HELD_OUT = {("dog", "cat"), ("cat", "dog")}
LEFT, RIGHT = (0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75)
TOP, BOTTOM = (0.25, 0.0, 0.75, 0.5), (0.25, 0.5, 0.75, 1.0)


def scene(a: str, b: str, relation: str, rng: random.Random) -> tuple[str, list[tuple]]:
    """A caption and its regions as `diffgen data emoji` writes them ("next to": either order)."""
    words = {"left": "to the left of", "above": "above", "next": "next to"}[relation]
    caption = f"a {a} {words} a {b}"
    box_a, box_b = {"left": (LEFT, RIGHT), "above": (TOP, BOTTOM)}.get(relation) or \
        ((LEFT, RIGHT) if rng.random() < 0.5 else (RIGHT, LEFT))
    start_b = caption.rindex(" ") + 1
    return caption, [(2, 2 + len(a), *box_a), (start_b, start_b + len(b), *box_b)]


def tiny_layout_config(tiny_config):
    return dataclasses.replace(tiny_config, layout=LayoutConfig(width=32, layers=1, heads=2, modes=2))


@pytest.fixture(scope="module")
def trained(tiny_config, tmp_path_factory) -> Path:
    """A tiny model whose predictor learnt the three relations on every noun pair but dog and cat."""
    torch.manual_seed(0)
    model = build_model(tiny_layout_config(tiny_config))
    randomize_zero_params(model.denoiser)
    text, predictor = model.text_encoder, model.layout
    spans = TokenSpans(text.tokenizer, text.context_length)
    pairs = [(a, b) for a in NOUNS for b in NOUNS if a != b and (a, b) not in HELD_OUT]
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=3e-3)
    for _ in range(300):
        scenes = [scene(*rng.choice(pairs), rng.choice(("left", "above", "next")), rng) for _ in range(32)]
        captions, regions = [c for c, _ in scenes], [r for _, r in scenes]
        with torch.no_grad():
            tokens, counts = text.token_states(captions)
        targets = LayoutTargets.of(captions, regions, spans, counts, tokens.shape[1])
        loss, _ = layout_loss(predictor(tokens, targets.valid), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predictor.trained_steps.fill_(300)
    path = tmp_path_factory.mktemp("layout") / "tiny-layout.safetensors"
    save_model(path, model.requires_grad_(False))
    return path


def centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def test_targets_mark_each_objects_tokens_with_the_box_around_its_drawings():
    class Words:  # one token per word
        def encode(self, text: str) -> list[int]:
            return [0] * len(text.split())

    caption = "three apples next to a dog"
    regions = [(6, 12, 0.0, 0.0, 0.3, 0.3), (6, 12, 0.2, 0.5, 0.4, 0.9), (23, 26, 0.6, 0.1, 1.0, 0.5)]
    targets = LayoutTargets.of([caption], [regions], TokenSpans(Words(), 77), [8], 10)
    assert targets.objectness[0].nonzero().flatten().tolist() == [2, 6]  # start token, "three", "apples" ...
    torch.testing.assert_close(targets.boxes[0, 2], torch.tensor([0.0, 0.0, 0.4, 0.9]))  # both apples
    torch.testing.assert_close(targets.boxes[0, 6], torch.tensor([0.6, 0.1, 1.0, 0.5]))
    assert targets.valid[0].tolist() == [True] * 8 + [False] * 2


def test_the_loss_pulls_the_closest_layout_and_teaches_which_one_won():
    targets = LayoutTargets(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[[0.0] * 4, [0.0, 0.0, 0.5, 1.0],
                                                                            [0.0] * 4]]),
                            torch.tensor([[True, True, False]]))
    boxes = torch.zeros(1, 2, 3, 4)
    boxes[0, 0, 1] = torch.tensor([0.5, 0.0, 1.0, 1.0])  # layout 0: 1.0 off in L1
    boxes[0, 1, 1] = torch.tensor([0.0, 0.0, 0.5, 1.0])  # layout 1: exact
    guess = LayoutGuess(torch.tensor([[-20.0, 20.0, 5.0]]), boxes, torch.tensor([[0.0, 0.0]]))
    total, parts = layout_loss(guess, targets)
    assert parts["objectness"].item() < 1e-6  # the third position holds no token: not counted
    assert parts["boxes"].item() == pytest.approx(RELAXED_SHARE * 1.0)
    assert parts["modes"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())  # 50:50, layout 1 won
    assert total.item() == pytest.approx(sum(v.item() for v in parts.values()))


def test_the_tiny_predictor_places_each_object_also_for_a_pair_it_never_saw(trained):
    model = load_model(trained)
    for a, b in (("owl", "car"), ("dog", "cat"), ("cat", "dog")):  # seen, then held out both ways
        left = predict_layout(model, f"a {a} to the left of a {b}")
        assert [f"a {a} to the left of a {b}"[s:e] for s, e in left.spans] == [a, b]
        for seed in range(4):  # whichever layout the seed draws
            first, second = (centre(p.box) for p in left.placements(seed))
            assert first[0] < 0.5 < second[0]
        above = predict_layout(model, f"a {a} above a {b}").placements(0)
        assert centre(above[0].box)[1] < 0.5 < centre(above[1].box)[1]
    # "next to" leaves the order open: both layouts are likely and the seeds draw both
    beside = predict_layout(model, "a fox next to a star")
    assert min(beside.weights) > 0.2
    firsts = {centre(beside.placements(seed)[0].box)[0] < 0.5 for seed in range(16)}
    assert firsts == {True, False}
    assert predict_layout(model, "a dog") is None  # one object: nothing to arrange
    assert predict_layout(model, "a (dog:1.3) to the left of a cat") is None  # weight syntax


def test_one_object_prompts_sample_as_before_and_two_object_prompts_are_laid_out(trained, tmp_path):
    for prompt, changed in (("a dog", False), ("a dog to the left of a cat", True)):
        auto, plain = tmp_path / f"auto-{changed}", tmp_path / f"plain-{changed}"
        assert sample(trained, auto, prompt, "-n", "2").exit_code == 0
        assert sample(trained, plain, prompt, "-n", "2", "--no-auto-layout").exit_code == 0
        same = [a.read_bytes() == b.read_bytes() for a, b in zip(pngs(auto), pngs(plain))]
        if not changed:  # the pixels; the recipes differ in the flag
            assert all(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
                       for a, b in zip(pngs(auto), pngs(plain)))
        else:
            assert not any(same)
    laid = pngs(tmp_path / "auto-True")
    with Image.open(laid[1]) as image:
        assert json.loads(image.info["diffgen"])["auto_layout"] is True
    with Image.open(pngs(tmp_path / "plain-True")[1]) as image:
        assert json.loads(image.info["diffgen"])["auto_layout"] is False
    result = run("sample", "--replay", laid[1], "-c", trained, "-o", tmp_path / "replay", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "replay" / laid[1].name).read_bytes() == laid[1].read_bytes()
    lines = tmp_path / "lines.jsonl"
    lines.write_text(json.dumps({"prompt": "a dog to the left of a cat", "n": 2, "auto_layout": False}) + "\n")
    assert sample(trained, tmp_path / "file", "-f", lines).exit_code == 0
    assert [p.read_bytes() for p in pngs(tmp_path / "file")] == [p.read_bytes() for p in pngs(tmp_path / "plain-True")]
    refused = run("sample", "--replay", laid[1], "-c", trained, "-o", tmp_path / "r2", "--no-auto-layout", "-q")
    assert refused.exit_code == 2 and "--no-auto-layout" in refused.output


def test_a_model_without_a_predictor_writes_the_recipes_it_wrote_before(tiny_checkpoint, tmp_path):
    assert sample(tiny_checkpoint, tmp_path / "out", "a dog to the left of a cat").exit_code == 0
    with Image.open(pngs(tmp_path / "out")[0]) as image:
        assert "auto_layout" not in json.loads(image.info["diffgen"])


# --- the layout stage of `diffgen train` --------------------------------------------------------

def pairs_folder(folder: Path, count: int = 32) -> Path:
    """8 px images captioned by metadata.jsonl with two objects and their regions each."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        a, b = rng.sample(NOUNS, 2)
        caption, regions = scene(a, b, rng.choice(("left", "above")), rng)
        Image.new("RGB", (8, 8), (rng.randrange(256), 90, 40)).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": [caption], "regions": [[list(r) for r in regions]]})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def layout_run_config(path: Path, layout_steps: int, **train) -> Path:
    data = config_to_dict(config_from_dict(tomllib.loads(train_config())))
    data["layout"] = {"width": 32, "layers": 1, "heads": 2, "modes": 2}
    data["train"].update(layout_steps=layout_steps, layout_batch_size=8, **train)
    path.write_text(config_to_toml(config_from_dict(data)))
    return path


def weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def train(folder: Path, out: Path, config: Path, *extra: str, steps: str = "4"):
    return run("train", folder, "-o", out, "--config", config, "--steps", steps, "--clip-steps", "2", "--device",
               "cpu", "-q", *extra)


def test_the_layout_stage_trains_after_the_unet_and_resumes_exactly(tmp_path):
    folder = pairs_folder(tmp_path / "pairs")
    straight = train(folder, tmp_path / "straight", layout_run_config(tmp_path / "a.toml", 8))
    assert straight.exit_code == 0, straight.output
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    layout = [r for r in rows if r["stage"] == "layout"]
    assert [r["step"] for r in layout] == list(range(1, 9)) and all({"objectness", "boxes", "modes"} <= r.keys()
                                                                    for r in layout)
    assert train(folder, tmp_path / "halves", layout_run_config(tmp_path / "b.toml", 4)).exit_code == 0
    assert list((tmp_path / "halves" / "state").glob("state-layout-00000004.json"))
    resumed = train(folder, tmp_path / "halves", layout_run_config(tmp_path / "b.toml", 8), "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = weights(tmp_path / "straight" / "model.safetensors"), weights(tmp_path / "halves" / "model.safetensors")
    assert any(k.startswith("layout.") for k in a) and a["layout.trained_steps"].item() == 8
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5


def test_steps_0_with_init_trains_only_the_predictor(tmp_path, tiny_checkpoint):
    folder = pairs_folder(tmp_path / "pairs")
    config = layout_run_config(tmp_path / "a.toml", 4, steps=0)
    result = train(folder, tmp_path / "run", config, "--init", str(tiny_checkpoint), steps="0")
    assert result.exit_code == 0, result.output
    before, after = weights(tiny_checkpoint), weights(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the U-Net and text tower as they were
    assert after["layout.trained_steps"].item() == 4
    no_init = train(folder, tmp_path / "run2", config, steps="0")
    assert no_init.exit_code == 2 and "--init" in no_init.output


def test_the_layout_stage_on_data_without_regions_is_one_line_exit_2(tmp_path, shapes_folder):
    result = train(shapes_folder, tmp_path / "run", layout_run_config(tmp_path / "a.toml", 4))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "object regions" in errors[0]


def test_init_from_a_model_with_a_predictor_under_a_config_without_one_leaves_it_out(tmp_path, trained):
    folder = pairs_folder(tmp_path / "pairs")
    config = tmp_path / "plain.toml"
    config.write_text(train_config())
    result = train(folder, tmp_path / "run", config, "--init", str(trained))
    assert result.exit_code == 0, result.output
    assert not any(k.startswith("layout.") for k in weights(tmp_path / "run" / "model.safetensors"))


def test_sampling_with_a_predictor_imports_neither_open_clip_nor_dynamo(trained):
    """The cold-start guard of test_clip_text for a model with a layout predictor, whose building
    on the meta device (the shape check) once imported torch._dynamo: 3 s of every start."""
    code = ("import sys, diffgen\n"
            f"diffgen.load({str(trained)!r}, device='cpu').sample('a dog to the left of a cat', steps=2, seed=0)\n"
            "print(sorted(m for m in ('open_clip', 'torchvision', 'timm', 'torch._dynamo') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
