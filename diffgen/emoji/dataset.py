"""`diffgen data emoji`'s folder: scenes from the composer (scenes.py) written as a captioned
image folder (images/, metadata.jsonl with captions, negative captions and object regions,
heldout.json, ATTRIBUTION.txt), the same for the same seed."""

from __future__ import annotations

import json
import random
from pathlib import Path

from diffgen.emoji.groups import LARGEST_EXTENT, GroupComposer, held_out_group_prompts
from diffgen.emoji.scenes import (
    DATA_RECIPES,
    PAIR_LAYOUT,
    PAIR_SCALES,
    SINGLE_SIZES,
    concepts,
    find_font,
    heldout_pairs,
    render_sprites,
)
from diffgen.errors import InputError

ATTRIBUTION = ("Emoji artwork: Noto Color Emoji, (c) Google, Apache License 2.0 "
               "(https://github.com/googlefonts/noto-emoji). Names: CLDR via the `emoji` package (BSD).\n")


def build_emoji_dataset(out: Path, count: int, size: int = 64, seed: int = 0,
                        font: str | Path | None = None, recipe: str = "standard") -> dict:
    """Write ``count`` scenes to ``out`` (images/ + metadata.jsonl + heldout.json); return a summary."""
    from diffgen.fileio import atomic_write

    if count < 1 or size < 16:
        raise InputError("--count must be at least 1 and --size at least 16")
    if recipe not in DATA_RECIPES:
        raise InputError(f"unknown data recipe '{recipe}' (choose from: {', '.join(DATA_RECIPES)})")
    items = concepts()
    sprites = render_sprites(find_font(font), items)
    # the glyphs are bitmaps (about 136 x 128): a scene drawing one larger than that would be
    # enlarged art, blurred, and an upscaler trained on it would learn the blur
    largest = max(max(f for _, f in SINGLE_SIZES), max(e for spots in PAIR_LAYOUT.values() for e, _, _ in spots)
                  * PAIR_SCALES[1], LARGEST_EXTENT)
    native = min(max(sprite.size) for sprite in sprites.values())
    if round(largest * size) > native:
        raise InputError(f"--size {size} would draw glyphs larger than the font's {native} px bitmaps; "
                         f"use --size {int(native / largest)} or less")
    held = heldout_pairs(items)
    # the group composer draws every other recipe's scenes exactly as SceneComposer does
    composer = GroupComposer(sprites, items, size, held, DATA_RECIPES[recipe])
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    # Until the new metadata.jsonl is written the folder is not a dataset: an interrupted rebuild
    # must not pair old captions with new images.
    (out / "metadata.jsonl").unlink(missing_ok=True)
    rows = []
    for i in range(count):
        image, captions, negatives, regions = composer.scene(rng)
        name = f"images/{i:06d}.png"
        (out / name).unlink(missing_ok=True)  # a link left there is removed, never written through
        image.save(out / name, compress_level=1)
        row = {"file_name": name, "text": captions, "regions": regions}
        if negatives:  # what the picture is not: for training's caption contrast
            row["negative_text"] = negatives
        rows.append(json.dumps(row))
    by_name = {c.name: c for c in items}
    held_prompts = sorted(f"{by_name[a].phrase(random.Random(0))} {rel} {by_name[b].phrase(random.Random(1))}"
                          for a, b in sorted(held) for rel in ("next to", "above"))
    held_out: dict = {"pairs": sorted(held), "both_orders": DATA_RECIPES[recipe].hold_both_orders,
                      "prompts": held_prompts}
    if DATA_RECIPES[recipe].group_from < 1:  # only recipes with groups: the others' files stay as they were
        held_out["group_prompts"] = held_out_group_prompts(items, held)
    atomic_write(out / "heldout.json", lambda tmp: Path(tmp).write_text(json.dumps(held_out, indent=1)))
    atomic_write(out / "ATTRIBUTION.txt", lambda tmp: Path(tmp).write_text(ATTRIBUTION))
    # metadata last: a folder with metadata.jsonl is a complete dataset
    atomic_write(out / "metadata.jsonl", lambda tmp: Path(tmp).write_text("\n".join(rows) + "\n"))
    return {"images": count, "size": size, "seed": seed, "recipe": recipe, "concepts": len(items),
            "held_out_pairs": len(held), "folder": str(out)}
