"""Template matching of single-object scenes against sprites (sprites made here: same colour,
different shapes, so only shape can tell them apart)."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageDraw

from diffgen.emoji.matching import SpriteMatcher
from diffgen.emoji.scenes import Concept, SceneComposer

from .helpers import SPRITE_COLOUR as COLOUR
from .helpers import SPRITE_SHAPES as SHAPES
from .helpers import shape_sprites as sprites

ITEMS = [Concept("x", name, name + "s", "object") for name in SHAPES]


@pytest.mark.parametrize("name", list(SHAPES))
def test_real_scenes_match_their_own_sprite(name):
    composer, rng = SceneComposer(sprites(), ITEMS, 64, set()), random.Random(1)
    matcher, ious = SpriteMatcher(sprites(), 64), []
    for _ in range(6):
        image, captions, _, _ = composer.single_scene(rng, next(c for c in ITEMS if c.name == name))
        assert name in captions[0]
        match = matcher.match(image, name)
        assert match.rank == 1 and match.best == name
        ious.append(match.iou)
    assert min(ious) > 0.95


def test_a_blob_of_the_right_colour_is_not_the_shape():
    # A disk where a triangle was asked for: right colour, size (38 px, the data's middle size)
    # and place, wrong shape.
    image = Image.new("RGB", (64, 64), (70, 110, 220))
    ImageDraw.Draw(image).ellipse([13, 13, 50, 50], fill=COLOUR[:3])
    matcher = SpriteMatcher(sprites(), 64)
    triangle = matcher.match(image, "triangle")
    assert triangle.best == "disk" and triangle.rank > 1 and triangle.iou < 0.7
    assert matcher.match(image, "disk").iou > 0.8


def test_an_empty_scene_has_no_silhouette_to_cover():
    match = SpriteMatcher(sprites(), 64).match(Image.new("RGB", (64, 64), (245, 225, 80)), "square")
    assert match.iou == 0.0


def test_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match="64 px"):
        SpriteMatcher(sprites(), 64).match(Image.new("RGB", (32, 32)), "square")
