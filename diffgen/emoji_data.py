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
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from diffgen.emoji_concepts import CONCEPT_TABLE, SYNONYMS
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
# The README's example prompt, "a panda on a bike", is shown more often than a random pair would be.
SHOWCASE = ("panda", "bicycle")
SHOWCASE_FRACTION = 0.03
ATTRIBUTION = ("Emoji artwork: Noto Color Emoji, (c) Google, Apache License 2.0 "
               "(https://github.com/googlefonts/noto-emoji). Names: CLDR via the `emoji` package (BSD).\n")


def article(word: str) -> str:
    """'a' or 'an' by the sound of the first letter (an umbrella, a unicorn)."""
    return "an" if word[:1] in tuple("aeiou") and not word.startswith(("uni", "use", "eu")) else "a"


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
                 held_out: set[tuple[str, str]]):
        self.sprites, self.items, self.size, self.held_out = sprites, items, size, held_out
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

    def _paste(self, canvas: Image.Image, name: str, extent: int, cx: float, cy: float) -> None:
        sprite = self._sprite(name, extent)
        canvas.alpha_composite(sprite, (round(cx - sprite.width / 2), round(cy - sprite.height / 2)))

    def scene(self, rng: random.Random) -> tuple[Image.Image, list[str]]:
        """One image and its captions (several phrasings of the same content)."""
        bg_name = rng.choice(list(BACKGROUNDS))
        canvas = Image.new("RGBA", (self.size, self.size), BACKGROUNDS[bg_name] + (255,))
        kind = rng.random()
        if kind < SHOWCASE_FRACTION and self.showcase is not None:
            captions = self._pair(canvas, rng, self.showcase)
        elif kind < 0.4:
            captions = self._single(canvas, rng)
        elif kind < 0.85:
            captions = self._pair(canvas, rng)
        else:
            captions = self._count(canvas, rng)
        if rng.random() < 0.5:
            captions.append(f"{captions[0]} on {article(bg_name)} {bg_name} background")
        return canvas.convert("RGB"), captions

    def single_scene(self, rng: random.Random, concept: Concept) -> tuple[Image.Image, list[str]]:
        """A scene of ``concept`` alone on a random background, at a random size and place."""
        canvas = Image.new("RGBA", (self.size, self.size), BACKGROUNDS[rng.choice(list(BACKGROUNDS))] + (255,))
        captions = self._single(canvas, rng, concept)
        return canvas.convert("RGB"), captions

    def _single(self, canvas: Image.Image, rng: random.Random, concept: Concept | None = None) -> list[str]:
        s = self.size
        concept = rng.choice(self.items) if concept is None else concept
        size_word, frac = rng.choice(SINGLE_SIZES)
        extent = round(frac * s)
        half = extent / 2
        cx, cy = rng.uniform(half, s - half), rng.uniform(half, s - half)
        self._paste(canvas, concept.name, extent, cx, cy)
        plain = concept.phrase(rng)
        captions = [plain, concept.phrase(rng, with_article=False)]
        if size_word:
            captions.append(f"{article(size_word)} {size_word} {concept.phrase(rng, with_article=False)}")
        return captions

    def _pair(self, canvas: Image.Image, rng: random.Random,
              fixed: tuple[Concept, Concept] | None = None) -> list[str]:
        s = self.size
        while fixed is None:
            a, b = rng.sample(self.items, 2)
            if (a.name, b.name) not in self.held_out:
                break
        relation = "on" if fixed is not None else rng.choice(RELATIONS)
        a, b = fixed if fixed is not None else (a, b)
        pa, pb = a.phrase(rng), b.phrase(rng)
        if relation == "on":  # a smaller A standing on top of B
            self._paste(canvas, b.name, round(0.62 * s), s / 2, 0.66 * s)
            self._paste(canvas, a.name, round(0.45 * s), s / 2, 0.32 * s)
            captions = [f"{pa} on {pb}", f"{pa} on top of {pb}"]
            if b.kind == "vehicle" and a.kind == "animal":
                captions.append(f"{pa} riding {pb}")
        elif relation == "above":
            self._paste(canvas, a.name, round(0.42 * s), s / 2, 0.24 * s)
            self._paste(canvas, b.name, round(0.42 * s), s / 2, 0.76 * s)
            captions = [f"{pa} above {pb}", f"{pb} below {pa}"]
        else:  # side by side: "left of" fixes the order, "next to" does not
            left_first = relation == "left of" or rng.random() < 0.5
            first, second = (a, b) if left_first else (b, a)
            y = rng.uniform(0.35, 0.65) * s
            self._paste(canvas, first.name, round(0.44 * s), 0.25 * s, y)
            self._paste(canvas, second.name, round(0.44 * s), 0.75 * s, y)
            if relation == "left of":
                captions = [f"{pa} to the left of {pb}", f"{pb} to the right of {pa}"]
            else:
                captions = [f"{pa} next to {pb}", f"{pa} beside {pb}"]
        return captions

    def _count(self, canvas: Image.Image, rng: random.Random) -> list[str]:
        s = self.size
        concept = rng.choice([c for c in self.items if c.plural != c.name])
        n = rng.choice(tuple(NUMBERS))
        extent = round(s * (0.42 if n > 2 else 0.45))
        spots = [(0.27, 0.5), (0.73, 0.5)] if n == 2 else [(0.27, 0.3), (0.73, 0.3), (0.5, 0.74)] \
            if n == 3 else [(0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)]
        for fx, fy in spots:
            self._paste(canvas, concept.name, extent, fx * s, fy * s)
        return [f"{NUMBERS[n]} {concept.plural}", f"{n} {concept.plural}"]


def build_emoji_dataset(out: Path, count: int, size: int = 64, seed: int = 0,
                        font: str | Path | None = None) -> dict:
    """Write ``count`` scenes to ``out`` (images/ + metadata.jsonl + heldout.json); return a summary."""
    from diffgen.fileio import atomic_write

    if count < 1 or size < 16:
        raise InputError("--count must be at least 1 and --size at least 16")
    items = concepts()
    sprites = render_sprites(find_font(font), items)
    held = heldout_pairs(items)
    composer = SceneComposer(sprites, items, size, held)
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    # Until the new metadata.jsonl is written the folder is not a dataset: an interrupted rebuild
    # must not pair old captions with new images.
    (out / "metadata.jsonl").unlink(missing_ok=True)
    rows = []
    for i in range(count):
        image, captions = composer.scene(rng)
        name = f"images/{i:06d}.png"
        image.save(out / name, compress_level=1)
        rows.append(json.dumps({"file_name": name, "text": captions}))
    by_name = {c.name: c for c in items}
    held_prompts = sorted(f"{by_name[a].phrase(random.Random(0))} {rel} {by_name[b].phrase(random.Random(1))}"
                          for a, b in sorted(held) for rel in ("next to", "above"))
    atomic_write(out / "heldout.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"pairs": sorted(held), "prompts": held_prompts}, indent=1)))
    atomic_write(out / "ATTRIBUTION.txt", lambda tmp: Path(tmp).write_text(ATTRIBUTION))
    # metadata last: a folder with metadata.jsonl is a complete dataset
    atomic_write(out / "metadata.jsonl", lambda tmp: Path(tmp).write_text("\n".join(rows) + "\n"))
    return {"images": count, "size": size, "seed": seed, "concepts": len(items),
            "held_out_pairs": len(held), "folder": str(out)}
