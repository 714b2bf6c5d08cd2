"""The "groups" data recipe (emoji/groups.py): scenes of three and four different objects whose
captions name them in reading order with each name's region where its sprite was pasted; held-out
pairs never together; deterministic; the other recipes draw exactly what they drew before."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from diffgen.emoji.groups import ARRANGEMENTS, GroupComposer, held_out_group_prompts
from diffgen.emoji.scenes import DATA_RECIPES, FONT_CANDIDATES, NUMBERS, SceneComposer, concepts

from .helpers import scene_items, scene_sprites

ITEMS = scene_items()
NAMES = {c.name for c in ITEMS} | {"bike"}  # "bike": the bicycle's synonym


def groups(held=frozenset(), size: int = 32) -> GroupComposer:
    return GroupComposer(scene_sprites(), ITEMS, size, set(held), DATA_RECIPES["groups"])


def group_scenes(comp: GroupComposer, count: int, seed: int = 0):
    rng = random.Random(seed)
    scenes = (comp.scene(rng) for _ in range(count))
    return [s for s in scenes if len(s.regions[0]) >= 3 and s.captions[0].split()[0] not in NUMBERS.values()]


def centre(region) -> tuple[float, float]:
    return (region[2] + region[4]) / 2, (region[3] + region[5]) / 2


def test_group_captions_name_three_or_four_different_objects_each_where_it_was_pasted():
    scenes = group_scenes(groups(), 300)
    assert len(scenes) > 60
    sizes = Counter(len(s.regions[0]) for s in scenes)
    assert sizes[3] > 20 and sizes[4] > 15
    for scene in scenes:
        pixels = np.asarray(scene.image).reshape(-1, 3)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        background = colours[counts.argmax()]
        side = scene.image.width
        for caption, regions in zip(scene.captions, scene.regions):
            names = [caption[start:end] for start, end, *_ in regions]
            assert len(set(names)) == len(names) and set(names) <= NAMES, caption
            for _, _, x0, y0, x1, y1 in regions:
                box = np.asarray(scene.image)[round(y0 * side):round(y1 * side), round(x0 * side):round(x1 * side)]
                # the sprites are ellipses filling 78% of their box
                assert (box != background).any(-1).mean() > 0.5, caption


def test_the_words_order_is_the_drawings_reading_order():
    rng, comp = random.Random(1), groups()
    group = [c for c in ITEMS if c.name in ("apple", "dog", "house", "panda")]
    for _ in range(20):
        for n in (3, 4):
            row = comp.group_scene(rng, group[:n], "row")
            xs = [centre(r)[0] for r in row.regions[0]]
            assert xs == sorted(xs) and row.captions[0].endswith(" in a row")
            names = [row.captions[0][start:end] for start, end, *_ in row.regions[0]]
            where = [row.negatives[0].index(name) for name in names]
            assert where == sorted(where, reverse=True)  # the negative names them right to left
            stack = comp.group_scene(rng, group[:n], "stack")
            ys = [centre(r)[1] for r in stack.regions[0]]
            assert ys == sorted(ys) and stack.captions[0].count(" above ") == n - 1
            assert not set(row.negatives) & set(row.captions) and not set(stack.negatives) & set(stack.captions)
        grid = comp.group_scene(rng, group, "grid")
        (ax, ay), (bx, by), (cx, cy), (dx, dy) = (centre(r) for r in grid.regions[0])
        assert ax < bx and cx < dx and max(ay, by) < min(cy, dy)
        plus = comp.group_scene(rng, group[:3], "pair plus")
        first = plus.captions[0]
        a, b, c = (centre(r) for r in plus.regions[0])
        assert (c[1] > max(a[1], b[1])) == first.endswith("below them")
        if " to the left of " in first:
            assert a[0] < b[0]


def test_held_out_pairs_are_never_in_a_group():
    comp = groups({("dog", "apple")})
    for scene in group_scenes(comp, 1500, seed=2):
        for caption in scene.captions + scene.negatives:
            assert not ("dog" in caption and "apple" in caption), caption


def test_groups_are_deterministic_and_the_recipe_gives_its_mix():
    a, b = group_scenes(groups(), 80, seed=4), group_scenes(groups(), 80, seed=4)
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [(s.captions, s.negatives, s.regions) for s in a] == [(s.captions, s.negatives, s.regions) for s in b]
    rng, comp, n = random.Random(3), groups(), 2000
    kinds = Counter()
    for _ in range(n):
        scene = comp.scene(rng)
        objects = len({tuple(r[:2]) for r in scene.regions[0]})
        kinds["group" if objects >= 3 else "pair" if objects == 2 else "other"] += 1
    assert abs(kinds["group"] / n - 0.35) < 0.04 and abs(kinds["pair"] / n - 0.40) < 0.04
    assert {a for a, _ in ARRANGEMENTS[3] + ARRANGEMENTS[4]} == {"row", "stack", "pair plus", "grid"}


# sha256 of the first 200 scenes' captions, negatives and regions (seed 0, ("dog", "apple") held
# out): the recipes before "groups" must draw what they always drew
FINGERPRINTS = {"standard": "00fa5856c9e56506", "composed": "c1c26eaac8e19d43", "pairs": "80275b848fa53248",
                "ordered": "d5dda3ed724c5c84"}


@pytest.mark.parametrize("recipe", sorted(FINGERPRINTS))
def test_the_other_recipes_draw_what_they_drew_before(recipe):
    digest = hashlib.sha256()
    plain = SceneComposer(scene_sprites(), ITEMS, 32, {("dog", "apple")}, DATA_RECIPES[recipe])
    grouping = GroupComposer(scene_sprites(), ITEMS, 32, {("dog", "apple")}, DATA_RECIPES[recipe])
    rng_a, rng_b = random.Random(0), random.Random(0)
    for i in range(200):
        scene, same = plain.scene(rng_a), grouping.scene(rng_b)
        digest.update(json.dumps([scene.captions, scene.negatives, scene.regions]).encode())
        if i < 30:
            assert scene.image.tobytes() == same.image.tobytes() and scene.captions == same.captions
    assert digest.hexdigest()[:16] == FINGERPRINTS[recipe]


def test_held_out_group_prompts_each_hold_a_held_out_pair():
    items = concepts()
    held = {("dog", "cat"), ("apple", "owl")}
    prompts = held_out_group_prompts(items, held)
    assert len(prompts) == 4 and prompts[0].endswith(" in a row")
    assert all(len(set(p.replace(" and ", ", ").split(", "))) >= 3 for p in prompts)


FONT = next((Path(p) for p in FONT_CANDIDATES if Path(p).is_file()), None)


@pytest.mark.skipif(FONT is None, reason="Noto Color Emoji is not installed (.ci/run installs it)")
def test_a_real_glyph_build_of_the_groups_recipe(tmp_path):
    from diffgen.data import scan_folder
    from diffgen.emoji.dataset import build_emoji_dataset

    summary = build_emoji_dataset(tmp_path / "g", count=30, size=64, seed=1, recipe="groups")
    assert summary["recipe"] == "groups"
    held = json.loads((tmp_path / "g" / "heldout.json").read_text())
    assert held["both_orders"] and len(held["group_prompts"]) == 16
    rows = [json.loads(line) for line in (tmp_path / "g" / "metadata.jsonl").read_text().splitlines()]
    assert any(len(r["regions"][0]) >= 3 for r in rows)
    assert len(scan_folder(tmp_path / "g", check_tokens=False).items) == 30
