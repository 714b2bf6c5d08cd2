"""The speedrun scorecard on sprites drawn here (same colour, different shapes): real scenes reach
the ceiling, wrong pictures do not, and the shape judge learns the shapes."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from diffgen.emoji.judge import load_judge, pil_batch, save_judge, train_judge
from diffgen.emoji.scenes import DATA_RECIPES, Concept, SceneComposer
from diffgen.emoji.scorecard import ImageAsk, Scorecard, pair_objects

from .helpers import SPRITE_COLOUR as COLOUR
from .helpers import SPRITE_SHAPES as MATCHING_SHAPES
from .helpers import shape_sprites as matching_sprites

# every test here uses the shape judge, which trains for about half a minute of CPU
pytestmark = pytest.mark.slow

SHAPES = {**MATCHING_SHAPES, "bar": lambda d: d.rectangle([0, 10, 29, 19], fill=COLOUR)}
ITEMS = [Concept("x", name, name + "s", "animal" if name in ("disk", "ring") else "vehicle") for name in SHAPES]


def sprites() -> dict[str, Image.Image]:
    return matching_sprites(SHAPES)


@pytest.fixture(scope="module")
def judge_and_info():
    composer = SceneComposer(sprites(), ITEMS, 64, set())
    return train_judge(composer, ITEMS, per_concept=40, epochs=10, seed=0, batch_size=16, log=lambda _: None)


def card(judge, pairs: int = 4) -> Scorecard:
    return Scorecard(sprites(), ITEMS, judge, 64, pairs=pairs, showcase_seeds=1, heldout=[("disk", "bar")])


def test_judge_learns_shapes_of_one_colour(judge_and_info, tmp_path):
    judge, info = judge_and_info
    assert info["test_top1"] >= 0.8  # six shapes of one colour: only shape tells them apart
    save_judge(judge, info, tmp_path / "judge.safetensors")
    again, info_again = load_judge(tmp_path / "judge.safetensors")
    image = SceneComposer(sprites(), ITEMS, 64, set()).single_scene(random.Random(3), ITEMS[2]).image
    assert again.ranks(pil_batch([image]), ["triangle"]) == judge.ranks(pil_batch([image]), ["triangle"])
    assert info_again == info


@pytest.mark.parametrize("section", ["singles", "pairs_seen", "pairs_heldout"])
def test_real_scenes_reach_the_ceiling(judge_and_info, section):
    scorecard = card(judge_and_info[0])
    result = scorecard.judge_section(section, scorecard.real_images(section))
    assert result["sprite_top1"] == 1.0
    assert result["judge_top1"] >= 0.75
    if section != "singles":
        assert result["sprite_all"] == 1.0


def test_a_pair_drawn_in_the_wrong_order_fails(judge_and_info):
    scorecard = card(judge_and_info[0])
    composer = SceneComposer(sprites(), ITEMS, 64, set())
    by_name = {c.name: c for c in ITEMS}
    ask = ImageAsk("a square to the left of a triangle", pair_objects("left of", "square", "triangle", 64), "left of")
    scorecard.sections["pairs_seen"] = [ask]
    right = composer.pair_scene(random.Random(0), by_name["square"], by_name["triangle"], "left of")[0]
    swapped = composer.pair_scene(random.Random(0), by_name["triangle"], by_name["square"], "left of")[0]
    assert scorecard.judge_section("pairs_seen", [right])["sprite_all"] == 1.0
    assert scorecard.judge_section("pairs_seen", [swapped])["sprite_all"] == 0.0
    assert scorecard.judge_section("pairs_seen", [swapped])["sprite_top1"] == 0.0


def test_varied_layout_pairs_are_still_found(judge_and_info):
    scorecard = card(judge_and_info[0], pairs=6)
    composer = SceneComposer(sprites(), ITEMS, 64, set(), DATA_RECIPES["composed"])
    by_name, rng = {c.name: c for c in ITEMS}, random.Random(5)
    asks = scorecard.sections["pairs_seen"]
    images = [composer.pair_scene(rng, by_name[a.objects[0].concept], by_name[a.objects[1].concept], a.relation)[0]
              for a in asks]
    assert scorecard.judge_section("pairs_seen", images)["sprite_top1"] >= 0.9


def test_fd_floor_is_below_a_shuffled_set(judge_and_info):
    scorecard = card(judge_and_info[0])
    real = scorecard.real_images("singles", 7)
    blank = [Image.new("RGB", (64, 64), (150, 150, 150)) for _ in real]
    fd_real, fd_blank = scorecard.fd(real), scorecard.fd(blank)
    assert fd_real["generated"] < fd_blank["generated"]
