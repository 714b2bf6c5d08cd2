"""The emoji model's scorecard: does it draw the objects it is asked for, alone and in pairs?

Four measures, each taken the same way for generated images and for real scenes composed by the
data's own composer for the same prompts (the ceiling to read them against), and each object
judged twice: by template matching against all sprites (emoji_eval.SpriteMatcher) and by a CNN
trained on the data's renders (emoji_judge.ShapeJudge). An object counts as recognised when the
prompted concept ranks first among all concepts.
- singles: "a cat" for every concept; top-1 / top-5 of the prompted concept.
- pairs, seen and held out: "A to the left of B" and "A above B"; each object judged inside its
  own half of the image; "both" = both objects recognised.
- showcase words: the showcase pair's words with other subjects and vehicles ("a dog riding a
  bicycle"); the rider is judged in the upper part, the vehicle in the lower part.
- FD: Fréchet distance between the judge's features of generated and real single-object scenes,
  beside the distance between two real sets of the same size (the floor).
Image k of a section uses seed k.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from diffgen.emoji.judge import ShapeJudge, pil_batch
from diffgen.emoji.matching import SpriteMatcher, background_colour
from diffgen.emoji.scenes import PAIR_LAYOUT, PAIR_SCALES, Concept, SceneComposer, heldout_pairs

# (prompt, rider, vehicle): the showcase's words with other subjects, and the showcase itself.
SHOWCASE_PROMPTS = (("a panda on a bike", "panda", "bicycle"), ("a dog riding a bicycle", "dog", "bicycle"),
                    ("a cat on a bike", "cat", "bicycle"), ("a panda on a car", "panda", "car"))
PAIR_RELATIONS = {"left of": "to the left of", "above": "above"}
REGION_MARGIN = 0.05  # fraction of the side added around an object's drawn extent


@dataclass(frozen=True)
class ObjectAsk:
    """One object to find: which concept, in which region (left, top, right, bottom), and at which
    sprite extents (pixels) to look for it."""

    concept: str
    box: tuple[int, int, int, int]
    extents: tuple[int, ...] | None  # None: a single object, any of the data's sizes, anywhere
    # What the judge sees, where it differs from ``box``: a rider and its vehicle overlap, and the
    # judge names an object best without the other one's half in view (split between them).
    judge_box: tuple[int, int, int, int] | None = None


def _extents(fraction: float, size: int) -> tuple[int, ...]:
    """The data's extent for an object of a pair, and the same scaled as a varied layout scales it."""
    return tuple(sorted({round(fraction * scale * size) for scale in (PAIR_SCALES[0], 1.0, PAIR_SCALES[1])}))


@dataclass(frozen=True)
class ImageAsk:
    prompt: str
    objects: tuple[ObjectAsk, ...]
    relation: str | None = None  # how the real counterpart is composed (None: a single object)


def pair_objects(relation: str, a: str, b: str, size: int) -> tuple[ObjectAsk, ObjectAsk]:
    """The two objects of a relation scene and the regions they are judged in."""
    if relation == "left of":
        extents = _extents(PAIR_LAYOUT["side by side"][0][0], size)
        return (ObjectAsk(a, (0, 0, size // 2, size), extents), ObjectAsk(b, (size // 2, 0, size, size), extents))
    (ea, _, ya), (eb, _, yb) = PAIR_LAYOUT["on" if relation == "on" else "above"]
    assert ya is not None and yb is not None  # only the side-by-side rows are left open
    if relation == "above":
        return (ObjectAsk(a, (0, 0, size, size // 2), _extents(ea, size)),
                ObjectAsk(b, (0, size // 2, size, size), _extents(eb, size)))
    top_bottom = min(size, round((ya + ea / 2 + REGION_MARGIN) * size))
    bottom_top = max(0, round((yb - eb / 2 - REGION_MARGIN) * size))
    split = round((ya + ea / 2 + yb - eb / 2) / 2 * size)  # halfway through the overlap
    return (ObjectAsk(a, (0, 0, size, top_bottom), _extents(ea, size), (0, 0, size, split)),
            ObjectAsk(b, (0, bottom_top, size, size), _extents(eb, size), (0, split, size, size)))


def region_square(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The region, padded to a square with the scene's background colour (what the judge sees)."""
    import numpy as np

    background = tuple(int(v) for v in background_colour(np.asarray(image.convert("RGB"))))
    crop = image.crop(box)
    side = max(crop.size)
    square = Image.new("RGB", (side, side), background)
    square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return square


class Scorecard:
    """The prompts of every section and the two judges, for one model resolution."""

    def __init__(self, sprites: dict[str, Image.Image], items: list[Concept], judge: ShapeJudge, size: int,
                 pairs: int = 24, showcase_seeds: int = 4, heldout: list[tuple[str, str]] | None = None):
        self.items, self.judge, self.size = items, judge, size
        self.by_name = {c.name: c for c in items}
        self.matcher = SpriteMatcher(sprites, size)
        self.composer = SceneComposer(sprites, items, size, held_out=set())
        held = sorted(heldout_pairs(items) if heldout is None else heldout)
        rng = random.Random(0)
        seen: list[tuple[str, str]] = []
        while len(seen) < pairs:
            a, b = rng.sample(items, 2)
            if (a.name, b.name) not in held and (b.name, a.name) not in held and (a.name, b.name) not in seen:
                seen.append((a.name, b.name))
        self.sections: dict[str, list[ImageAsk]] = {
            "singles": [ImageAsk(c.with_article(), (ObjectAsk(c.name, (0, 0, size, size), None),)) for c in items],
            "pairs_seen": self._pair_asks(seen),
            "pairs_heldout": self._pair_asks(rng.sample(held, min(pairs, len(held)))),
            "showcase_words": [ImageAsk(prompt, pair_objects("on", rider, vehicle, size), "on")
                               for prompt, rider, vehicle in SHOWCASE_PROMPTS for _ in range(showcase_seeds)
                               if {rider, vehicle} <= self.by_name.keys()],
        }

    def _pair_asks(self, pairs: list[tuple[str, str]]) -> list[ImageAsk]:
        asks = []
        for k, (a, b) in enumerate(pairs):
            relation = list(PAIR_RELATIONS)[k % len(PAIR_RELATIONS)]
            words = PAIR_RELATIONS[relation]
            prompt = f"{self.by_name[a].with_article()} {words} {self.by_name[b].with_article()}"
            asks.append(ImageAsk(prompt, pair_objects(relation, a, b, self.size), relation))
        return asks

    def real_images(self, section: str, seed: int = 0) -> list[Image.Image]:
        """Scenes the data composer draws for the section's prompts (the ceiling)."""
        rng = random.Random(seed)
        images = []
        for ask in self.sections[section]:
            first = self.by_name[ask.objects[0].concept]
            if ask.relation is None:
                images.append(self.composer.single_scene(rng, first).image)
            else:
                second = self.by_name[ask.objects[1].concept]
                images.append(self.composer.pair_scene(rng, first, second, ask.relation)[0])
        return images

    def judge_section(self, section: str, images: list[Image.Image]) -> dict[str, Any]:
        """Per-object ranks by both judges and the section's summary rates."""
        asks = self.sections[section]
        sprite_ranks, crops, names = [], [], []
        for ask, image in zip(asks, images, strict=True):
            for obj in ask.objects:
                if obj.extents is None:
                    sprite_ranks.append(self.matcher.match(image, obj.concept).rank)
                    crops.append(image)
                else:
                    sprite_ranks.append(self.matcher.match_region(image, obj.concept, obj.box, obj.extents).rank)
                    crops.append(region_square(image, obj.judge_box or obj.box))
                names.append(obj.concept)
        judge_ranks: list[int] = []
        for i in range(0, len(crops), 128):
            judge_ranks += self.judge.ranks(pil_batch(crops[i:i + 128]), names[i:i + 128])
        per_image = len(asks[0].objects)
        out: dict[str, Any] = {"images": len(asks)}
        for label, ranks in (("sprite", sprite_ranks), ("judge", judge_ranks)):
            out[f"{label}_top1"] = sum(r == 1 for r in ranks) / len(ranks)
            out[f"{label}_top5"] = sum(r <= 5 for r in ranks) / len(ranks)
            if per_image > 1:
                groups = [ranks[i:i + per_image] for i in range(0, len(ranks), per_image)]
                out[f"{label}_all"] = sum(all(r == 1 for r in g) for g in groups) / len(groups)
        if section == "showcase_words":
            out["by_prompt"] = {}
            for prompt, _, _ in SHOWCASE_PROMPTS:
                rows = [i for i, ask in enumerate(asks) if ask.prompt == prompt]
                out["by_prompt"][prompt] = {
                    label: sum(all(r == 1 for r in ranks[2 * i:2 * i + 2]) for i in rows) / len(rows)
                    for label, ranks in (("sprite", sprite_ranks), ("judge", judge_ranks))}
        return out

    def fd(self, generated: list[Image.Image]) -> dict[str, float]:
        """Fréchet distance in judge features: generated vs real singles, and real vs real."""
        from diffgen.evaluate import frechet_distance

        with torch.no_grad():
            feats = [self.judge.features(pil_batch(images)) for images in
                     (generated, self.real_images("singles", 1), self.real_images("singles", 2))]
        return {"generated": frechet_distance(feats[0], feats[1]), "real_floor": frechet_distance(feats[2], feats[1])}


def sample_section(model, asks: list[ImageAsk], steps: int, guidance: float, batch_size: int = 16,
                   upscale: bool = False) -> list[Image.Image]:
    """Image k of the section from seed k with the CLI's sampler settings; at the model's base size
    (the scorecard's), or (``upscale``) enlarged by its upscaler."""
    from diffgen.sampling.generate import ImageTask, generate
    from diffgen.sampling.images import to_pil

    tasks = [ImageTask(index=k, prompt=ask.prompt, seed=k, steps=steps, guidance=guidance, upscale=upscale)
             for k, ask in enumerate(asks)]
    with torch.inference_mode():
        return [to_pil(image[None])[0] for _, image, _ in generate(model, tasks, batch_size=batch_size)]


def score_model(card: Scorecard, model, steps: int = 20, guidance: float = 3.0) -> dict[str, Any]:
    """Every section for ``model`` and for real scenes, and the FD."""
    results: dict[str, Any] = {"steps": steps, "guidance": guidance}
    singles: list[Image.Image] = []
    for section, asks in card.sections.items():
        if not asks:
            continue
        images = sample_section(model, asks, steps, guidance)
        if section == "singles":
            singles = images
        results[section] = {"generated": card.judge_section(section, images),
                            "real": card.judge_section(section, card.real_images(section))}
    results["fd_judge"] = card.fd(singles)
    return results
