"""`diffgen data emoji`: a captioned folder of scenes composed from Noto Color Emoji artwork.

Sprites are rendered once from the font (a CBDT bitmap font: Pillow draws it only at size 109,
with ``embedded_color=True``), cropped to their alpha bounds, then pasted onto plain coloured
backgrounds: single objects at varied size and position, two-object relations ("a panda on a
bicycle", "an apple to the left of a dog") and counts ("three apples"), each with several
phrasings. Some object pairs are held out of training so generalisation can be measured.
Everything is deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

from PIL import Image, ImageDraw, ImageFont

from diffgen.emoji.concepts import CONCEPT_TABLE, SYNONYMS
from diffgen.engine.regions import Box, Region
from diffgen.errors import DiffgenError, InputError

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-color-emoji/NotoColorEmoji.ttf",
    "/System/Library/Fonts/Apple Color Emoji.ttc",
)
BACKGROUNDS = {
    "white": (250, 250, 250), "gray": (150, 150, 150), "red": (220, 60, 60), "orange": (245, 150, 50),
    "yellow": (245, 225, 80), "green": (90, 180, 90), "blue": (70, 110, 220), "light blue": (150, 200, 245),
    "purple": (150, 90, 200), "pink": (245, 170, 200),
}
NUMBERS = {2: "two", 3: "three", 4: "four"}
# A single object's size word and its extent (longer side) as a fraction of the image side.
SINGLE_SIZES = (("small", 0.4), ("", 0.6), ("large", 0.85))
RELATIONS = ("on", "next to", "left of", "above")
# Where a two-object relation draws its objects: (extent, centre x, centre y), fractions of the
# image side, for the first-named object A and the second B. Side-by-side scenes pick their row
# at random within SIDE_BY_SIDE_ROWS; the evaluation judges each object inside its own region.
PAIR_LAYOUT = {
    "on": ((0.45, 0.5, 0.32), (0.62, 0.5, 0.66)),  # a smaller A standing on top of B
    "above": ((0.42, 0.5, 0.24), (0.42, 0.5, 0.76)),
    "side by side": ((0.44, 0.25, None), (0.44, 0.75, None)),
}
SIDE_BY_SIDE_ROWS = (0.35, 0.65)
# The README's example prompt, "a panda on a bike", is shown more often than a random pair would be.
SHOWCASE = ("panda", "bicycle")


@dataclass(frozen=True)
class DataRecipe:
    """What share of scenes is of which kind, and how two-object scenes are drawn.

    The kinds are cumulative bounds on one uniform draw per scene (kept as bounds so that the
    standard recipe's draws stay exactly those of earlier builds): showcase below
    ``showcase_until``, a single object below ``single_until``, an animal riding a vehicle below
    ``riding_until``, a two-object relation below ``pair_until``, a count below ``group_from``, and
    from there a scene of three or four different objects (emoji/groups.py).
    """

    showcase_until: float = 0.03  # the showcase pair, "a panda on a bicycle"
    single_until: float = 0.4
    riding_until: float = 0.4  # any animal on any vehicle ("a dog riding a bus")
    pair_until: float = 0.85
    # Two-object scenes at a random scale (PAIR_SCALES) and shifted by up to PAIR_SHIFT of the side,
    # instead of always at the same spots.
    varied_layout: bool = False
    # A held-out pair is never shown in either order (the standard recipe holds out the ordered pair).
    hold_both_orders: bool = False
    # The relations a two-object scene draws from, uniformly.
    relations: tuple[str, ...] = RELATIONS
    # 1.0: no scenes of three or four objects (a draw is always below it), so older recipes draw as before
    group_from: float = 1.0

    def __post_init__(self) -> None:
        unknown = set(self.relations) - set(RELATIONS)
        if not self.relations or unknown:
            raise ValueError(f"relations must be some of {RELATIONS}, not {sorted(unknown)}")


# "standard": the data of the shipped model. "composed": the showcase is a rare scene drawn like
# every other pair (so "riding" and "on a bike" are learned with many subjects and vehicles), half
# the scenes are single objects, pairs vary in scale and place, held-out pairs in both orders.
# "pairs": drawn like "composed", with two-object relations 60% of the scenes (30% there) and single
# objects 25% (50% there): for continuing a model that draws objects alone but not two at once.
# "ordered": "pairs" with every two-object scene besides the riding ones (and the showcase) "to
# the left of" or "above": "next to" and "beside" place the objects in either order, so they do not
# teach which word goes where, and "on" repeats the riding scenes.
DATA_RECIPES = {
    "standard": DataRecipe(),
    "composed": DataRecipe(showcase_until=0.005, single_until=0.5, riding_until=0.6, pair_until=0.9,
                           varied_layout=True, hold_both_orders=True),
    "pairs": DataRecipe(showcase_until=0.005, single_until=0.25, riding_until=0.35, pair_until=0.95,
                        varied_layout=True, hold_both_orders=True),
    "ordered": DataRecipe(showcase_until=0.005, single_until=0.25, riding_until=0.35, pair_until=0.95,
                          varied_layout=True, hold_both_orders=True, relations=("left of", "above")),
    # "groups": "pairs" with 35% of the scenes of three or four different objects (emoji/groups.py),
    # pairs still 33%, singles 20%, counts 5%: the data for laying out and drawing N objects.
    "groups": DataRecipe(showcase_until=0.005, single_until=0.2, riding_until=0.27, pair_until=0.6,
                         varied_layout=True, hold_both_orders=True, group_from=0.65),
}
PAIR_SCALES = (0.8, 1.1)
PAIR_SHIFT = 0.08


def article(word: str) -> str:
    """'a' or 'an' by the sound of the first letter (an umbrella, a unicorn)."""
    return "an" if word[:1] in tuple("aeiou") and not word.startswith(("uni", "use", "eu")) else "a"


class Scene(NamedTuple):
    """A composed image, its captions (several phrasings of the same content), negative captions
    (the same words with the objects in each other's places: what the image is not) and, per
    caption, the regions of the objects it names (for training's grounding loss)."""

    image: Image.Image
    captions: list[str]
    negatives: list[str]
    # (start, end) of each name in the caption, its article left out, and the sprite's box; a
    # name drawn more than once ("three apples") has one region per copy
    regions: list[list[Region]]


def spelled(*parts: str | tuple[str, Box | list[Box]]) -> tuple[str, list[Region]]:
    """A caption from plain words and (phrase, box or boxes) parts, with the region of each
    phrase's name: ``spelled(("a dog", box), " above ", ("a cat", box2))``."""
    text, regions = "", []
    for part in parts:
        if isinstance(part, str):
            text += part
            continue
        phrase, boxes = part
        words = phrase.split(" ", 1)
        skip = len(words[0]) + 1 if len(words) == 2 and words[0] in ("a", "an") else 0
        for box in boxes if isinstance(boxes, list) else [boxes]:
            regions.append((len(text) + skip, len(text) + len(phrase), *box))
        text += phrase
    return text, regions


@dataclass(frozen=True)
class Concept:
    cldr: str
    name: str
    plural: str
    kind: str

    def phrase(self, rng: random.Random, with_article: bool = True) -> str:
        """'a panda' / 'an apple' / 'grapes', sometimes with a synonym ('a bike')."""
        name = rng.choice((self.name,) + SYNONYMS.get(self.name, ())) if rng.random() < 0.5 else self.name
        return self.with_article(name) if with_article else name

    def with_article(self, name: str | None = None) -> str:
        """``name`` (default: the concept's own) with 'a'/'an', unless the concept is a mass noun."""
        name = self.name if name is None else name
        return name if self.plural == self.name else f"{article(name)} {name}"


def concepts() -> list[Concept]:
    """The curated concept table."""
    return [Concept(*line.split("|")) for line in CONCEPT_TABLE.strip().splitlines()]


def find_font(path: str | Path | None = None) -> Path:
    """The emoji font: ``path`` if given, else the usual install locations."""
    if path is not None:
        if not Path(path).is_file():
            raise InputError(f"emoji font not found: {path}")
        return Path(path)
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise InputError("Noto Color Emoji font not found: install it (Debian/Ubuntu: "
                     "`sudo apt-get install fonts-noto-color-emoji`) or pass --font PATH")


def render_sprites(font_path: Path, items: list[Concept]) -> dict[str, Image.Image]:
    """Each concept's glyph as an RGBA image cropped to its visible pixels."""
    import emoji

    glyphs = {v["en"].strip(":").lower(): k for k, v in emoji.EMOJI_DATA.items() if v.get("status") == 2}
    try:
        font = ImageFont.truetype(str(font_path), 109)  # CBDT fonts load only at their bitmap size
    except OSError as exc:
        raise DiffgenError(f"cannot load emoji font {font_path}: {exc}") from None
    sprites = {}
    for concept in items:
        if concept.cldr not in glyphs:
            raise DiffgenError(f"the emoji package has no '{concept.cldr}'; upgrade it (pip install -U emoji)")
        canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((8, 8), glyphs[concept.cldr], font=font, embedded_color=True)
        box = canvas.getchannel("A").getbbox()
        if box is None:
            raise DiffgenError(f"the font draws nothing for '{concept.cldr}' (a newer emoji than the font?)")
        sprites[concept.name] = canvas.crop(box)
    return sprites


def heldout_pairs(items: list[Concept], fraction: float = 0.03, keep: tuple[str, ...] = ("panda", "bicycle")
                  ) -> set[tuple[str, str]]:
    """Ordered object pairs never shown together in training (a fixed, seed-independent choice;
    the showcase pair panda/bicycle is always kept in training)."""
    held = set()
    for a in items:
        for b in items:
            if a.name == b.name or {a.name, b.name} == set(keep):
                continue
            digest = hashlib.sha256(f"{a.name}|{b.name}".encode()).digest()
            if int.from_bytes(digest[:4], "little") / 2**32 < fraction:
                held.add((a.name, b.name))
    return held


class SceneComposer:
    """Composes captioned scenes from sprites; one ``random.Random`` drives every choice."""

    def __init__(self, sprites: dict[str, Image.Image], items: list[Concept], size: int,
                 held_out: set[tuple[str, str]], recipe: DataRecipe = DataRecipe()):
        self.sprites, self.items, self.size, self.recipe = sprites, items, size, recipe
        self.held_out = held_out | {(b, a) for a, b in held_out} if recipe.hold_both_orders else held_out
        self.animals = [c for c in items if c.kind == "animal"]
        self.vehicles = [c for c in items if c.kind == "vehicle"]
        self._cache: dict[tuple[str, int], Image.Image] = {}
        by_name = {c.name: c for c in items}
        self.showcase = (by_name[SHOWCASE[0]], by_name[SHOWCASE[1]]) if set(SHOWCASE) <= by_name.keys() else None

    def _sprite(self, name: str, extent: int) -> Image.Image:
        key = (name, extent)
        if key not in self._cache:
            sprite = self.sprites[name]
            scale = extent / max(sprite.size)
            self._cache[key] = sprite.resize((max(1, round(sprite.width * scale)),
                                              max(1, round(sprite.height * scale))), Image.Resampling.LANCZOS)
        return self._cache[key]

    def _paste(self, canvas: Image.Image, name: str, extent: int, cx: float, cy: float) -> Box:
        """Draw the sprite centred at (cx, cy); its box as fractions of the side."""
        sprite = self._sprite(name, extent)
        left, top = round(cx - sprite.width / 2), round(cy - sprite.height / 2)
        canvas.alpha_composite(sprite, (left, top))
        s = self.size
        box = (left / s, top / s, (left + sprite.width) / s, (top + sprite.height) / s)
        return tuple(round(min(max(v, 0.0), 1.0), 4) for v in box)  # type: ignore[return-value]

    def scene(self, rng: random.Random) -> Scene:
        """One image, its captions, negative captions and regions."""
        bg_name = rng.choice(list(BACKGROUNDS))
        canvas = Image.new("RGBA", (self.size, self.size), BACKGROUNDS[bg_name] + (255,))
        kind, recipe = rng.random(), self.recipe
        negatives: list[str] = []
        if kind < recipe.showcase_until and self.showcase is not None:
            captions, negatives = self._pair(canvas, rng, self.showcase)
        elif kind < recipe.single_until:
            captions = self._single(canvas, rng)
        elif kind < recipe.riding_until and self.animals and self.vehicles:
            captions, negatives = self._pair(canvas, rng, self._rider_and_vehicle(rng), "on")
        elif kind < recipe.pair_until:
            captions, negatives = self._pair(canvas, rng)
        elif kind < recipe.group_from:
            captions = self._count(canvas, rng)
        else:
            captions, negatives = self._group(canvas, rng)
        if rng.random() < 0.5:  # the first caption's objects keep their places in the longer one
            text, regions = captions[0]
            captions.append((f"{text} on {article(bg_name)} {bg_name} background", regions))
            if negatives:  # the negatives say as much about the background as the captions do
                negatives.append(f"{negatives[0]} on {article(bg_name)} {bg_name} background")
        return self._finish(canvas, captions, negatives)

    @staticmethod
    def _finish(canvas: Image.Image, captions: list[tuple[str, list[Region]]], negatives: list[str]) -> Scene:
        return Scene(canvas.convert("RGB"), [c for c, _ in captions], negatives, [r for _, r in captions])

    def single_scene(self, rng: random.Random, concept: Concept) -> Scene:
        """A scene of ``concept`` alone on a random background, at a random size and place (a single
        object has no negative captions: nothing in it can be put in the wrong place)."""
        canvas = Image.new("RGBA", (self.size, self.size), BACKGROUNDS[rng.choice(list(BACKGROUNDS))] + (255,))
        return self._finish(canvas, self._single(canvas, rng, concept), [])

    def _single(self, canvas: Image.Image, rng: random.Random, concept: Concept | None = None
                ) -> list[tuple[str, list[Region]]]:
        s = self.size
        concept = rng.choice(self.items) if concept is None else concept
        size_word, frac = rng.choice(SINGLE_SIZES)
        extent = round(frac * s)
        half = extent / 2
        cx, cy = rng.uniform(half, s - half), rng.uniform(half, s - half)
        box = self._paste(canvas, concept.name, extent, cx, cy)
        plain = concept.phrase(rng)
        captions = [spelled((plain, box)), spelled((concept.phrase(rng, with_article=False), box))]
        if size_word:
            captions.append(spelled(f"{article(size_word)} {size_word} ",
                                    (concept.phrase(rng, with_article=False), box)))
        return captions

    def pair_scene(self, rng: random.Random, a: Concept, b: Concept, relation: str) -> Scene:
        """A scene of ``a`` and ``b`` in ``relation`` (one of RELATIONS) on a random background."""
        canvas = Image.new("RGBA", (self.size, self.size), BACKGROUNDS[rng.choice(list(BACKGROUNDS))] + (255,))
        captions, negatives = self._pair(canvas, rng, (a, b), relation)
        return self._finish(canvas, captions, negatives)

    def _rider_and_vehicle(self, rng: random.Random) -> tuple[Concept, Concept]:
        while True:
            pair = rng.choice(self.animals), rng.choice(self.vehicles)
            if (pair[0].name, pair[1].name) not in self.held_out:
                return pair

    def _layout(self, rng: random.Random, relation: str) -> tuple[tuple[float, float, float], ...]:
        """(extent, x, y) of both objects, fractions of the side: the relation's fixed spots, or,
        with a varied layout, the same arrangement scaled and shifted (kept inside the image)."""
        key = relation if relation in ("on", "above") else "side by side"
        spots = PAIR_LAYOUT[key]
        y = rng.uniform(*SIDE_BY_SIDE_ROWS) if key == "side by side" else None
        # the row is None only in the side-by-side spots, where y was drawn
        placed = tuple((e, x, cast(float, y) if cy is None else cy) for e, x, cy in spots)
        if not self.recipe.varied_layout:
            return placed
        scale = rng.uniform(*PAIR_SCALES)
        dx, dy = rng.uniform(-PAIR_SHIFT, PAIR_SHIFT), rng.uniform(-PAIR_SHIFT, PAIR_SHIFT)
        scaled = []
        for e, x, cy in placed:
            e = e * scale
            # scale the arrangement about the centre, shift it, keep each object inside the image
            x = min(max(0.5 + (x - 0.5) * scale + dx, e / 2), 1 - e / 2)
            cy = min(max(0.5 + (cy - 0.5) * scale + dy, e / 2), 1 - e / 2)
            scaled.append((e, x, cy))
        return tuple(scaled)

    def _pair(self, canvas: Image.Image, rng: random.Random,
              fixed: tuple[Concept, Concept] | None = None, relation: str | None = None
              ) -> tuple[list[tuple[str, list[Region]]], list[str]]:
        """Draw two objects in a relation; their captions and, where the relation fixes the order,
        negative captions that name the two in each other's places."""
        s = self.size
        while fixed is None:
            a, b = rng.sample(self.items, 2)
            if (a.name, b.name) not in self.held_out:
                break
        if relation is None:
            relation = "on" if fixed is not None else rng.choice(self.recipe.relations)
        a, b = fixed if fixed is not None else (a, b)
        pa, pb = a.phrase(rng), b.phrase(rng)
        if relation == "on":  # a smaller A standing on top of B
            (ea, xa, ya), (eb, xb, yb) = self._layout(rng, relation)
            box_b = self._paste(canvas, b.name, round(eb * s), xb * s, yb * s)
            box_a = self._paste(canvas, a.name, round(ea * s), xa * s, ya * s)
            words = ["on", "on top of"] + (["riding"] if b.kind == "vehicle" and a.kind == "animal" else [])
            captions = [spelled((pa, box_a), f" {w} ", (pb, box_b)) for w in words]
            negatives = [f"{pb} on {pa}", f"{pb} on top of {pa}"]
        elif relation == "above":
            (ea, xa, ya), (eb, xb, yb) = self._layout(rng, relation)
            box_a = self._paste(canvas, a.name, round(ea * s), xa * s, ya * s)
            box_b = self._paste(canvas, b.name, round(eb * s), xb * s, yb * s)
            captions = [spelled((pa, box_a), " above ", (pb, box_b)), spelled((pb, box_b), " below ", (pa, box_a))]
            negatives = [f"{pb} above {pa}", f"{pa} below {pb}"]
        else:  # side by side: "left of" fixes the order, "next to" does not
            left_first = relation == "left of" or rng.random() < 0.5
            first, second = (a, b) if left_first else (b, a)
            (e1, x1, y1), (e2, x2, y2) = self._layout(rng, relation)
            box_first = self._paste(canvas, first.name, round(e1 * s), x1 * s, y1 * s)
            box_second = self._paste(canvas, second.name, round(e2 * s), x2 * s, y2 * s)
            box_a, box_b = (box_first, box_second) if left_first else (box_second, box_first)
            if relation == "left of":
                captions = [spelled((pa, box_a), " to the left of ", (pb, box_b)),
                            spelled((pb, box_b), " to the right of ", (pa, box_a))]
                negatives = [f"{pb} to the left of {pa}", f"{pa} to the right of {pb}"]
            else:
                captions = [spelled((pa, box_a), f" {w} ", (pb, box_b)) for w in ("next to", "beside")]
                negatives = []
        if (b.name, a.name) in self.held_out:  # a held-out prompt is never shown, not even as a negative
            negatives = []
        return captions, negatives

    def _group(self, canvas: Image.Image, rng: random.Random) -> tuple[list[tuple[str, list[Region]]], list[str]]:
        """Three or four objects: drawn by emoji/groups.GroupComposer, which recipes with groups need."""
        raise ValueError("this recipe draws scenes of three or four objects: use emoji.groups.GroupComposer")

    def _count(self, canvas: Image.Image, rng: random.Random) -> list[tuple[str, list[Region]]]:
        s = self.size
        concept = rng.choice([c for c in self.items if c.plural != c.name])
        n = rng.choice(tuple(NUMBERS))
        extent = round(s * (0.42 if n > 2 else 0.45))
        spots = [(0.27, 0.5), (0.73, 0.5)] if n == 2 else [(0.27, 0.3), (0.73, 0.3), (0.5, 0.74)] \
            if n == 3 else [(0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)]
        boxes = [self._paste(canvas, concept.name, extent, fx * s, fy * s) for fx, fy in spots]
        return [spelled(f"{number} ", (concept.plural, boxes)) for number in (NUMBERS[n], str(n))]
