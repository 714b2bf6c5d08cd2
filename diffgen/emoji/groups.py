"""Scenes of three and four different objects, for the "groups" data recipe (emoji/scenes.py).

A group is drawn in one of a few arrangements, each named by captions whose word order is the
drawing's reading order (left to right, then top to bottom), so "a heart, a phone and a fish in a
row" puts the heart on the left: a row ("A, B and C in a row"), a stack ("A above B above C"), a
pair with a third object above or below it ("A to the left of B, C below them") and, for four, a
2x2 grid ("A and B above C and D"). The plain list ("A, B and C") is a caption of every
arrangement, so it leaves the arrangement open, as a user's prompt does. Like the varied pairs, the
whole arrangement is scaled and shifted at random (and each object nudged a little), so the
layout predictor sees how much a scene's places and sizes vary. Every caption carries each name's
region; a negative caption names the objects in another order where the words fix one. A group
never holds two objects whose pair is held out (in either order), so a held-out pair is never
seen together, not even among others.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from PIL import Image

from diffgen.emoji.scenes import BACKGROUNDS, Concept, Scene, SceneComposer, spelled
from diffgen.engine.regions import Box, Region

Caption = tuple[str, list[Region]]
# Each object's extent (longer side, a fraction of the image side) in a row or stack of N objects,
# in the grid, and in a pair with one more object; rows and stacks keep a gap between neighbours
# even at the largest scale.
ROW_EXTENT = {3: 0.28, 4: 0.21}
GRID_EXTENT = 0.38
PAIR_PLUS_EXTENT = 0.38
GROUP_SCALES = (0.85, 1.1)
GROUP_SHIFT = 0.08
NUDGE = 0.02  # each object's own shift, so the objects of a row are not exactly in line
LARGEST_EXTENT = max(max(ROW_EXTENT.values()), GRID_EXTENT, PAIR_PLUS_EXTENT) * GROUP_SCALES[1]
# (arrangement, weight) for three and for four objects
ARRANGEMENTS: dict[int, tuple[tuple[str, float], ...]] = {3: (("row", 0.35), ("stack", 0.25), ("pair plus", 0.4)),
                4: (("row", 0.3), ("stack", 0.2), ("grid", 0.5))}
FOUR_SHARE = 0.4  # of the groups, the share of four objects


def listed(phrases: Sequence[tuple[str, Box]], suffix: str = "") -> Caption:
    """"A, B and C" (with each name's region) followed by ``suffix``."""
    parts: list[str | tuple[str, Box | list[Box]]] = []
    for i, (phrase, box) in enumerate(phrases):
        if i:
            parts.append(" and " if i == len(phrases) - 1 else ", ")
        parts.append((phrase, box))
    return spelled(*parts, suffix)


def chained(phrases: Sequence[tuple[str, Box]], word: str) -> Caption:
    """"A above B above C" (with each name's region)."""
    parts: list[str | tuple[str, Box | list[Box]]] = []
    for i, item in enumerate(phrases):
        parts += [f" {word} "] if i else []
        parts.append(item)
    return spelled(*parts)


class GroupComposer(SceneComposer):
    """The scene composer that also draws groups of three or four objects (``DataRecipe.group_from``)."""

    def group_scene(self, rng: random.Random, group: Sequence[Concept], arrangement: str) -> Scene:
        """A scene of ``group`` (3 or 4 concepts) in ``arrangement`` (one of ARRANGEMENTS[len(group)])
        on a random background."""
        canvas = Image.new("RGBA", (self.size, self.size), BACKGROUNDS[rng.choice(list(BACKGROUNDS))] + (255,))
        captions, negatives = self._arranged(canvas, rng, list(group), arrangement)
        return self._finish(canvas, captions, negatives)

    def allowed(self, names: Sequence[str]) -> bool:
        """Whether no two of ``names`` form a held-out pair (in either order)."""
        return not any((a, b) in self.held_out or (b, a) in self.held_out
                       for i, a in enumerate(names) for b in names[i + 1:])

    def _group(self, canvas: Image.Image, rng: random.Random) -> tuple[list[Caption], list[str]]:
        n = 4 if rng.random() < FOUR_SHARE else 3
        while True:
            group = rng.sample(self.items, n)
            if self.allowed([c.name for c in group]):
                break
        arrangement = rng.choices([a for a, _ in ARRANGEMENTS[n]], [w for _, w in ARRANGEMENTS[n]])[0]
        return self._arranged(canvas, rng, group, arrangement)

    def _spots(self, rng: random.Random, n: int, arrangement: str) -> list[tuple[float, float, float]]:
        """(extent, x, y) of each object in reading order, fractions of the side, before scaling."""
        if arrangement in ("row", "stack"):
            e, line = ROW_EXTENT[n], rng.uniform(0.3, 0.7)
            along = [(i + 0.5) / n for i in range(n)]
            return [(e, a, line) if arrangement == "row" else (e, line, a) for a in along]
        if arrangement == "grid":
            return [(GRID_EXTENT, x, y) for y in (0.27, 0.73) for x in (0.27, 0.73)]
        # "pair plus": the pair on one row, the third object centred on the other
        pair_row, other_row = (0.72, 0.27) if rng.random() < 0.5 else (0.27, 0.72)
        e = PAIR_PLUS_EXTENT
        return [(e, 0.27, pair_row), (e, 0.73, pair_row), (e, 0.5, other_row)]

    def _placed(self, rng: random.Random, spots: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
        """The arrangement scaled about the centre, shifted, each object nudged, all inside the image."""
        scale = rng.uniform(*GROUP_SCALES)
        dx, dy = rng.uniform(-GROUP_SHIFT, GROUP_SHIFT), rng.uniform(-GROUP_SHIFT, GROUP_SHIFT)
        out = []
        for e, x, y in spots:
            e = e * scale
            x = 0.5 + (x - 0.5) * scale + dx + rng.uniform(-NUDGE, NUDGE)
            y = 0.5 + (y - 0.5) * scale + dy + rng.uniform(-NUDGE, NUDGE)
            out.append((e, min(max(x, e / 2), 1 - e / 2), min(max(y, e / 2), 1 - e / 2)))
        return out

    def _arranged(self, canvas: Image.Image, rng: random.Random, group: list[Concept], arrangement: str
                  ) -> tuple[list[Caption], list[str]]:
        s, n = self.size, len(group)
        spots = self._spots(rng, n, arrangement)
        upper = spots[0][2] < spots[2][2] if arrangement == "pair plus" else True  # the pair above the third
        placed = self._placed(rng, spots)
        # "next to" leaves the pair's order open: its two objects swap places half the time
        pair_word = rng.choice(("next to", "to the left of")) if arrangement == "pair plus" else ""
        swapped = pair_word == "next to" and rng.random() < 0.5
        if swapped:
            placed[0], placed[1] = placed[1], placed[0]
        boxes = [self._paste(canvas, c.name, round(e * s), x * s, y * s) for c, (e, x, y) in zip(group, placed)]
        phrases = [(c.phrase(rng), box) for c, box in zip(group, boxes)]
        names = [p for p, _ in phrases]
        plain = listed(phrases)
        if arrangement == "row":
            captions = [listed(phrases, " in a row"), listed(phrases, " from left to right"), plain]
            negatives = [listed(list(reversed(phrases)), " in a row")[0]]
        elif arrangement == "stack":
            captions = [chained(phrases, "above"), chained(list(reversed(phrases)), "below"), plain]
            negatives = [" above ".join(reversed(names))]
        elif arrangement == "grid":
            captions = [spelled(phrases[0], " and ", phrases[1], " above ", phrases[2], " and ", phrases[3]), plain]
            negatives = [f"{names[2]} and {names[3]} above {names[0]} and {names[1]}"]
        else:
            where, wrong = ("below them", "above them") if upper else ("above them", "below them")
            captions = [spelled(phrases[0], f" {pair_word} ", phrases[1], ", ", phrases[2], f" {where}")]
            if pair_word == "to the left of":
                captions.append(spelled(phrases[1], " to the right of ", phrases[0], ", ", phrases[2], f" {where}"))
            if upper and not swapped:  # the plain list only where it is the reading order
                captions.append(plain)
            negatives = [f"{names[0]} {pair_word} {names[1]}, {names[2]} {wrong}"]
            if pair_word == "to the left of":
                negatives.append(f"{names[1]} to the left of {names[0]}, {names[2]} {where}")
        return captions, negatives


def held_out_groups(items: list[Concept], held: set[tuple[str, str]], count: int = 8) -> list[tuple[str, ...]]:
    """Groups of three and of four objects (names, in prompt order) that each begin with a held-out
    pair (so no training scene shows them): ``count`` of each size, the others chosen by hash."""
    out: list[tuple[str, ...]] = []
    for a, b in sorted(held)[:count]:
        digest = hashlib.sha256(f"{a}|{b}|group".encode()).digest()
        others = [c.name for c in items if c.name not in (a, b)]
        c, d = others[digest[0] % len(others)], others[(digest[1] + 1 + digest[0]) % len(others)]
        if d == c:
            d = others[(others.index(c) + 1) % len(others)]
        out += [(a, b, c), (a, b, c, d)]
    return out


def group_prompt(items: list[Concept], names: Sequence[str], arrangement: str = "list") -> str:
    """The prompt of ``names`` as the data words it: "A, B and C" ("list"), "... in a row" ("row"),
    "A above B above C" ("stack")."""
    by_name = {c.name: c for c in items}
    phrases = [by_name[n].with_article() for n in names]
    if arrangement == "stack":
        return " above ".join(phrases)
    text = ", ".join(phrases[:-1]) + f" and {phrases[-1]}"
    return text + " in a row" if arrangement == "row" else text


def held_out_group_prompts(items: list[Concept], held: set[tuple[str, str]], count: int = 8) -> list[str]:
    """The held_out_groups as prompts for evaluation: rows of three, lists of four."""
    return [group_prompt(items, names, "row" if len(names) == 3 else "list")
            for names in held_out_groups(items, held, count)]
