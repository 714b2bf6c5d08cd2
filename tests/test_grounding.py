"""The grounding loss (train.grounding_weight): object regions from the emoji composer and from
metadata.jsonl, names to token positions, boxes to attention-resolution masks, the loss against
hand-computed values, the kept attention weights, and the loss in training runs. A training run
that uses it and resumes exactly: test_resume.py ("grounding", "grounding_pass")."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageChops

from diffgen.data import TrainingSet, scan_folder
from diffgen.engine.regions import GroundingTargets, TokenSpans
from diffgen.training.grounding import grounding_loss, grounding_targets, kept_attention

from .helpers import (
    cli,
    diffusion_metrics,
    make_shapes_folder,
    randomize_zero_params,
    scene_composer,
    scene_items,
    train_args,
    train_config,
    with_regions,
)


@pytest.mark.parametrize("relation", ["left of", "above", "on", "next to"])
def test_a_pair_scenes_regions_name_each_object_where_it_is_drawn(relation):
    by_name = {c.name: c for c in scene_items()}
    apple, house = by_name["apple"], by_name["house"]
    scene = scene_composer().pair_scene(random.Random(2), apple, house, relation)
    background = Image.new("RGB", scene.image.size, scene.image.getpixel((0, 0)))
    drawn = ImageChops.difference(scene.image, background).getbbox()
    assert len(scene.regions) == len(scene.captions)
    for caption, regions in zip(scene.captions, scene.regions):
        assert sorted(caption[start:end] for start, end, *_ in regions) == ["apple", "house"]
        boxes = {caption[start:end]: box for start, end, *box in regions}
        # the two boxes together span exactly what was drawn
        side = scene.image.width
        union = [min(b[0] for b in boxes.values()), min(b[1] for b in boxes.values()),
                 max(b[2] for b in boxes.values()), max(b[3] for b in boxes.values())]
        assert [round(v * side) for v in union] == list(drawn)
        (ax0, ay0, ax1, ay1), (hx0, hy0, hx1, hy1) = boxes["apple"], boxes["house"]
        if relation == "left of":
            assert (ax0 + ax1) < (hx0 + hx1)  # the apple is named first and drawn on the left
        if relation == "above":
            assert (ay0 + ay1) < (hy0 + hy1)


def test_single_and_count_scenes_have_a_region_per_drawn_copy():
    comp, rng = scene_composer(), random.Random(0)
    scenes = [comp.scene(rng) for _ in range(300)]
    singles = [s for s in scenes if len(s.regions[0]) == 1]
    counts = [s for s in scenes if s.captions[0].split()[0] in ("two", "three", "four")]
    assert singles and counts
    for scene in counts:
        number = {"two": 2, "three": 3, "four": 4}[scene.captions[0].split()[0]]
        for caption, regions in zip(scene.captions, scene.regions):
            assert len(regions) == number and len({caption[s:e] for s, e, *_ in regions}) == 1
    for scene in singles:  # "a dog", "dog", "a small dog", "... on a red background": the same box
        assert len({tuple(r[0][2:]) for r in scene.regions}) == 1
        assert all(c[r[0][0]:r[0][1]] in c.split(" on ")[0] for c, r in zip(scene.captions, scene.regions))


def test_metadata_regions_are_read_and_bad_ones_are_named(tmp_path):
    folder = with_regions(make_shapes_folder(tmp_path / "shapes", count=5))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    rows[1]["regions"] = [[[0, 99, 0.1, 0.1, 0.5, 0.5]]]  # past the caption's end
    rows[2]["regions"] = [[[0, 1, 0.5, 0.1, 0.4, 0.5]]]  # x1 < x0
    rows[3]["regions"] = []  # not one list per caption
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    Image.new("RGB", (16, 12), "white").save(folder / "img004.png")  # not square: a crop would move boxes
    report = scan_folder(folder, check_tokens=False)
    by_name = {item.path.name: item for item in report.items}
    caption = rows[0]["text"][0]
    assert by_name["img000.png"].regions == {caption: (tuple(rows[0]["regions"][0][0]),)}
    assert all(by_name[f"img00{i}.png"].regions == {} and by_name[f"img00{i}.png"].captions for i in (1, 2, 3, 4))
    assert len([w for w in report.warnings if "regions do not fit" in w]) == 3
    assert "1 image(s) with object regions (for train.grounding_weight)" in report.summary_lines()


def test_regions_beside_a_caption_that_is_not_text_are_ignored_with_a_warning(tmp_path):
    folder = with_regions(make_shapes_folder(tmp_path / "shapes", count=2))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    rows[1]["text"] = [rows[1]["text"][0], 5]
    rows[1]["regions"] = [rows[1]["regions"][0], [[0, 1, 0.1, 0.1, 0.5, 0.5]]]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = scan_folder(folder, check_tokens=False)
    by_name = {item.path.name: item for item in report.items}
    assert by_name["img001.png"].regions == {} and by_name["img001.png"].captions == (rows[1]["text"][0],)
    assert len([w for w in report.warnings if "regions do not fit" in w]) == 1


def test_a_names_characters_map_to_its_token_positions(tiny_model):
    text = tiny_model.text_encoder
    spans = TokenSpans(text.tokenizer, text.context_length)
    caption = "a hot air balloon to the left of an alarm clock"
    ids, _ = text.tokenize([caption])
    decode = text.tokenizer.decode
    for name, count in (("hot air balloon", 3), ("alarm clock", 2)):
        start = caption.index(name)
        positions = spans.positions(caption, start, start + len(name))
        assert len(positions) == count
        assert decode(ids[0, positions].tolist()).strip() == name
    assert spans.positions(caption, 0, 1) == [1]  # position 0 is the start token


def test_boxes_become_masks_at_each_resolution():
    targets = GroundingTargets(torch.tensor([0, 0]), torch.zeros(2, 77),
                               [[(0.0, 0.0, 0.5, 0.5)], [(0.6, 0.6, 0.62, 0.62), (0.0, 0.5, 0.25, 1.0)]])
    masks = targets.masks(4).view(2, 4, 4)
    assert masks[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # a box smaller than a pixel still marks the pixel under its centre
    assert masks[1].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]]


def test_the_loss_is_one_minus_the_share_inside_squared():
    tokens = torch.zeros(1, 5)
    tokens[0, [1, 2]] = 1.0  # the name is tokens 1 and 2
    targets = GroundingTargets(torch.tensor([1]), tokens, [[(0.0, 0.0, 0.5, 1.0)]])  # left half, batch row 1
    probs = torch.full((2, 3, 4, 5), 0.2)  # (batch, heads, 2x2 pixels, tokens): uniform
    assert grounding_loss([probs], targets).item() == pytest.approx(0.25)  # half inside: (1 - 0.5)^2
    left = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5, 0.5]])  # name tokens / others
    probs = torch.stack([left[0], left[1], left[0], left[1]])[None, None].expand(2, 3, 4, 5)
    assert grounding_loss([probs], targets).item() == pytest.approx(0.0, abs=1e-7)
    right = probs.flip(2)  # the name attended from the right column only
    assert grounding_loss([probs, right], targets).item() == pytest.approx(0.5)  # mean of 0 and 1
    empty = GroundingTargets(torch.zeros(0, dtype=torch.long), torch.zeros(0, 5), [])
    assert grounding_loss([probs], empty).item() == 0.0


def test_kept_attention_weights_give_the_same_output_and_a_step_on_them_pulls_a_name_into_its_box(tiny_config):
    from diffgen.engine.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config)
    randomize_zero_params(model.denoiser)
    unet = model.denoiser.net
    modules = unet.cross_attentions()
    assert len(modules) == 4  # one 4 px down block, the middle, two 4 px up blocks
    x, c_noise = torch.randn(2, 3, 8, 8), torch.zeros(2)
    tokens, pooled = torch.randn(2, 77, tiny_config.text.width), torch.randn(2, tiny_config.text.embed_dim)
    plain = unet(x, c_noise, tokens, pooled)
    with kept_attention(modules) as kept:
        assert all(m.keep_probs for m in modules)
        out = unet(x, c_noise, tokens, pooled)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    assert len(kept) == 4 and kept[0].shape == (2, 4, 16, 77)  # (batch, 32 channels / head_dim 8, 4x4 pixels, tokens)
    torch.testing.assert_close(kept[0].sum(-1), torch.ones(2, 4, 16))
    assert all(not m.keep_probs and m.probs is None for m in modules)
    name = torch.zeros(1, 77)
    name[0, 3] = 1.0
    targets = GroundingTargets(torch.tensor([0]), name, [[(0.0, 0.0, 0.5, 0.5)]])
    optimizer = torch.optim.SGD(unet.parameters(), lr=0.5)
    losses = []
    for _ in range(2):
        with kept_attention(modules) as kept:
            unet(x, c_noise, tokens, pooled)
        loss = grounding_loss(kept, targets)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[1] < losses[0]


def test_grounding_targets_skip_dropped_captions_and_images_without_regions():
    data = TrainingSet(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), [("a dog",), ("a cat",), ("an owl",)],
                       [Path(f"{i}.png") for i in range(3)], None,
                       [{"a dog": ((2, 5, 0.0, 0.0, 0.5, 0.5),)}, {"a cat": ((2, 5, 0.5, 0.5, 1.0, 1.0),)}, {}])

    class Words:  # one token per word
        def encode(self, text: str) -> list[int]:
            return [0] * len(text.split())

    spans = TokenSpans(Words(), 77)
    targets = grounding_targets(data, [0, 1, 2], ["a dog", "", "an owl"], spans, torch.device("cpu"))
    assert targets.rows.tolist() == [0] and targets.boxes == [[(0.0, 0.0, 0.5, 0.5)]]
    assert targets.tokens[0].nonzero().flatten().tolist() == [2]  # start token, "a", then "dog"


def test_the_grounding_loss_on_data_without_regions_is_one_line_exit_2(tmp_path):
    folder = make_shapes_folder(tmp_path / "shapes")
    config = tmp_path / "grounding.toml"
    config.write_text(train_config(train={"grounding_weight": 1.0}))
    result = cli(*train_args(folder, tmp_path / "run", config, steps=2, clip_steps=1))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "object regions" in errors[0]


def test_grounding_min_sigma_leaves_out_images_below_it(tmp_path):
    """Above every training sigma no image is named: the term is 0 and the loss is the denoising
    loss; at 0 every image counts (the run above)."""
    folder = with_regions(make_shapes_folder(tmp_path / "shapes"))
    config = tmp_path / "grounding.toml"
    config.write_text(train_config(train={"grounding_weight": 0.5, "grounding_min_sigma": 1e4}))
    result = cli(*train_args(folder, tmp_path / "run", config, steps=4, clip_steps=1))
    assert result.exit_code == 0, result.output
    rows = diffusion_metrics(tmp_path / "run")
    assert len(rows) == 4 and all(r["grounding"] == 0 and r["loss"] == r["denoising"] for r in rows)


def test_the_grounding_pass_needs_a_noise_floor_below_sigma_max():
    from diffgen.errors import ConfigError
    for floor in (0.0, 80.0):
        with pytest.raises(ConfigError, match="grounding_pass_images"):
            train_config(train={"grounding_weight": 0.5, "grounding_min_sigma": floor, "grounding_pass_images": 4})
