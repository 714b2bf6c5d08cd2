"""The emoji scene composer (with sprites made here, no font needed) and one real-glyph build."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from diffgen.data import scan_folder
from diffgen.emoji.dataset import build_emoji_dataset
from diffgen.emoji.scenes import (
    FONT_CANDIDATES,
    SceneComposer,
    article,
    concepts,
    heldout_pairs,
)

from .helpers import scene_composer as composer
from .helpers import scene_items
from .helpers import scene_sprites as sprites

ITEMS = scene_items()


def test_scenes_are_deterministic_and_captioned():
    a = [composer().scene(random.Random(5)) for _ in range(3)]
    b = [composer().scene(random.Random(5)) for _ in range(3)]
    for (img_a, cap_a, neg_a, reg_a), (img_b, cap_b, neg_b, reg_b) in zip(a, b):
        assert img_a.size == (32, 32) and img_a.mode == "RGB"
        assert img_a.tobytes() == img_b.tobytes() and cap_a == cap_b and cap_a and neg_a == neg_b
        assert reg_a == reg_b and len(reg_a) == len(cap_a)


@pytest.mark.parametrize("relation", ["left of", "above", "on"])
def test_a_pair_scenes_negatives_are_the_captions_of_its_mirror_image(relation):
    """The negative captions of "A left of B" are the captions of "B left of A": the same words
    with the objects in each other's places. "next to" fixes no order and has none."""
    by_name = {c.name: c for c in ITEMS}
    apple, house = by_name["apple"], by_name["house"]  # no synonyms: phrasing is fixed
    scene = composer().pair_scene(random.Random(2), apple, house, relation)
    mirror = composer().pair_scene(random.Random(2), house, apple, relation)
    assert scene.negatives and set(scene.negatives) == set(mirror.captions[:2])
    assert not set(scene.negatives) & set(scene.captions)
    assert composer().pair_scene(random.Random(2), apple, house, "next to").negatives == []


def test_held_out_pairs_never_appear_together():
    held = {("dog", "apple"), ("apple", "dog")}
    comp, rng = composer(held), random.Random(0)
    for _ in range(600):
        captions = comp.scene(rng).captions
        assert not any("dog" in c and "apple" in c for c in captions)


def test_a_held_out_ordered_pair_is_not_shown_even_as_a_negative():
    """The standard recipe holds out "dog ... apple" but shows "apple ... dog": that scene's
    mirror captions would be the held-out prompts, so it has no negatives."""
    comp, rng = composer({("dog", "apple")}), random.Random(0)
    scenes = [comp.scene(rng) for _ in range(1500)]
    held_prompts = [f"a dog {words} an apple" for words in ("to the left of", "above", "next to", "on")]
    assert not any(c.startswith(p) for s in scenes for c in s.captions + s.negatives for p in held_prompts)
    shown = [s for s in scenes if any(c.startswith("an apple") and "dog" in c for c in s.captions)]
    assert shown and all(s.negatives == [] for s in shown)
    with_background = [s for s in scenes if s.negatives and s.captions[-1].endswith(" background")]
    assert with_background and all(s.negatives[-1].endswith(s.captions[-1].split(" on ")[-1])
                                   for s in with_background)


def test_caption_grammar():
    assert [article(w) for w in ("apple", "unicorn", "umbrella", "panda", "orange")] == \
        ["an", "a", "an", "a", "an"]
    comp, rng = composer(), random.Random(1)
    seen = [c for _ in range(400) for c in comp.scene(rng)[1]]
    assert not any(c.startswith(("a grapes", "an grapes", "a apple")) for c in seen)
    assert any(c.startswith(("two ", "three ", "four ")) for c in seen)
    assert any(" riding " in c for c in seen) and any(" to the left of " in c for c in seen)
    assert any(" bike" in c for c in seen)  # synonyms are used


def test_heldout_choice_keeps_the_showcase_pair():
    held = heldout_pairs(concepts())
    assert ("panda", "bicycle") not in held and ("bicycle", "panda") not in held
    assert 0.01 < len(held) / (131 * 130) < 0.05


FONT = next((Path(p) for p in FONT_CANDIDATES if Path(p).is_file()), None)


@pytest.mark.skipif(FONT is None, reason="Noto Color Emoji is not installed (.ci/run installs it)")
def test_real_glyph_build(tmp_path):
    first = build_emoji_dataset(tmp_path / "a", count=40, size=32, seed=3)
    build_emoji_dataset(tmp_path / "b", count=40, size=32, seed=3)
    assert first["images"] == 40 and first["concepts"] == len(concepts())
    meta = (tmp_path / "a" / "metadata.jsonl").read_text()
    assert meta == (tmp_path / "b" / "metadata.jsonl").read_text()
    row = json.loads(meta.splitlines()[7])
    assert (tmp_path / "a" / row["file_name"]).read_bytes() == (tmp_path / "b" / row["file_name"]).read_bytes()
    image = Image.open(tmp_path / "a" / row["file_name"])
    assert image.size == (32, 32) and len(image.getcolors(4096) or range(4097)) > 10  # real artwork, not a flat fill
    report = scan_folder(tmp_path / "a", check_tokens=False)
    assert len(report.items) == 40 and report.skipped == []
    assert json.loads((tmp_path / "a" / "heldout.json").read_text())["prompts"]


@pytest.mark.parametrize("recipe, singles, two_objects",
                         [("composed", 0.5, 0.405), ("pairs", 0.25, 0.705), ("ordered", 0.25, 0.705)])
def test_data_recipes_give_their_mix_of_scenes(recipe, singles, two_objects):
    from diffgen.emoji.scenes import DATA_RECIPES, NUMBERS

    maker = SceneComposer(sprites(), ITEMS, 32, set(), DATA_RECIPES[recipe])
    rng, n = random.Random(3), 2000
    kinds = {"single": 0, "two": 0, "count": 0}
    for _ in range(n):
        first = maker.scene(rng)[1][0]
        if first.split()[0] in NUMBERS.values():
            kinds["count"] += 1
        elif any(w in first for w in (" on ", " above ", " next to ", " left of ")):
            kinds["two"] += 1
        else:
            kinds["single"] += 1
    # one standard error at 2,000 draws is at most 0.011
    assert abs(kinds["single"] / n - singles) < 0.04
    assert abs(kinds["two"] / n - two_objects) < 0.04


def test_the_ordered_recipe_names_its_objects_in_the_order_they_are_drawn():
    """Every two-object scene of 'ordered' is 'to the left of' or 'above' (or a rider on its vehicle);
    'next to' scenes, whose order is random, never occur."""
    from diffgen.emoji.scenes import DATA_RECIPES

    maker = SceneComposer(sprites(), ITEMS, 32, set(), DATA_RECIPES["ordered"])
    rng = random.Random(5)
    relations = {"left of": 0, "above": 0, "on": 0}
    for _ in range(600):
        captions = maker.scene(rng)[1]
        assert not any(" next to " in c or " beside " in c for c in captions)
        for relation in relations:
            relations[relation] += f" {relation} " in captions[0]
    assert relations["left of"] > 100 and relations["above"] > 100 and relations["on"] > 20
