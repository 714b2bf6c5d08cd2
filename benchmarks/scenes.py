"""Scenes of several objects measured (issue 34): how much the layout varies from seed to seed, and
whether every object of a three- or four-object prompt is drawn.

    python benchmarks/scenes.py variety [-c MODEL] [--seeds 8] [--images] [--out runs/scenes-bench]
    python benchmarks/scenes.py objects [-c MODEL] [--seeds 2] [--groups 4] [--pairs 8] [--out ...]

variety: for pair prompts ("A to the left of B", "A next to B", "A above B") and triple prompts ("A,
B and C in a row", "A above B above C", "A, B and C"), the layout the model's predictor draws for
each of --seeds seeds (PredictedLayout.placements, what sampling uses), and the regions of scenes
the data's composer draws for the same caption with as many seeds. Reported per prompt kind: the
standard deviation over seeds of each object's box centre (x, y, as fractions of the side) and of
its log-size, averaged over objects and prompts, and the mean IoU between two objects of one layout
(how often a draw piles them up). With --images also the mean pairwise distance between the seeds'
images in the shape judge's features, for generated and for real scenes, as they are ("features")
and with each image's background made one grey ("objects_features": the background colour, which
every seed changes, otherwise dominates the distance; the judge pools its features over the
image, so they hardly see where objects are), and the mean 1 - IoU of two seeds' foregrounds
("masks": where things are drawn).
objects: three- and four-object prompts (seen groups and held-out ones: emoji/groups.held_out_groups)
x --seeds seeds, sampled with the model (20 steps, guidance 3, base size); each object judged in the
box its layout gave it (the predictor's draw for that seed, with a margin; real scenes: their own
regions) by the sprite matcher and the shape judge; per-object top-1 and all-objects rates, beside
real scenes; and --pairs pair prompts of the scorecard (pairs_seen) as a check that pairs hold up.
The shape judge is OUT/judge.safetensors, trained once (a few CPU minutes) where it is missing.
Results go to OUT/variety-NAME.json and OUT/objects-NAME.json (NAME: the model file's stem or its
folder's name).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MARGIN = 0.05  # of the side, around a box an object is judged in
PAIR_FORMS = {"left of": "to the left of", "next to": "next to", "above": "above"}
TRIPLE_FORMS = ("row", "stack", "list")


class Bench:
    """The concepts, their sprites, a group composer over them, the judge (loaded lazily)."""

    def __init__(self, out: Path, size: int):
        from diffgen.emoji.groups import GroupComposer
        from diffgen.emoji.scenes import DATA_RECIPES, concepts, find_font, heldout_pairs, render_sprites

        self.items = concepts()
        self.by_name = {c.name: c for c in self.items}
        self.sprites = render_sprites(find_font(), self.items)
        self.held = heldout_pairs(self.items)
        self.composer = GroupComposer(self.sprites, self.items, size, set(), DATA_RECIPES["groups"])
        self.out, self.size = out, size
        self._judge: Any = None

    def seen_groups(self, n: int, count: int, seed: int = 0) -> list[tuple[str, ...]]:
        """``count`` groups of ``n`` concepts that hold no held-out pair, in either order."""
        rng, out = random.Random(seed), []
        while len(out) < count:
            names = tuple(c.name for c in rng.sample(self.items, n))
            if all((a, b) not in self.held and (b, a) not in self.held for a, b in itertools.permutations(names, 2)):
                out.append(names)
        return out

    def judge(self) -> Any:
        from diffgen.emoji.judge import load_judge, save_judge, train_judge
        from diffgen.emoji.scenes import SceneComposer

        if self._judge is None:
            path = self.out / "judge.safetensors"
            if path.is_file():
                self._judge, _ = load_judge(path)
            else:
                self._judge, info = train_judge(SceneComposer(self.sprites, self.items, self.size, set()), self.items)
                self.out.mkdir(parents=True, exist_ok=True)
                save_judge(self._judge, info, path)
        return self._judge

    def real(self, names: tuple[str, ...], form: str, seed: int) -> tuple[Any, list[tuple[float, ...]]]:
        """A real scene of ``names`` in ``form`` (a pair relation or a group arrangement; "list": the
        arrangement drawn as the recipe draws it), and its objects' boxes in ``names``' order."""
        from diffgen.emoji.groups import ARRANGEMENTS

        rng = random.Random(seed)
        concepts = [self.by_name[n] for n in names]
        if len(names) == 2:
            scene = self.composer.pair_scene(rng, concepts[0], concepts[1], form)
        else:
            if form == "list":
                arrangements = ARRANGEMENTS[len(names)]
                form = rng.choices([a for a, _ in arrangements], [w for _, w in arrangements])[0]
            scene = self.composer.group_scene(rng, concepts, form)
        return scene.image, [tuple(r[2:]) for r in scene.regions[0]]


def prompt_of(bench: Bench, names: tuple[str, ...], form: str) -> str:
    from diffgen.emoji.groups import group_prompt

    if len(names) == 2:
        a, b = (bench.by_name[n].with_article() for n in names)
        return f"{a} {PAIR_FORMS[form]} {b}"
    return group_prompt(bench.items, names, form)


def drawn_boxes(model: Any, prompt: str, seeds: list[int]) -> list[list[tuple[float, ...]]] | None:
    """The boxes the model's predictor draws for each seed, in the order the prompt names them."""
    from diffgen.sampling.predicted_layout import predict_layout

    layout = predict_layout(model, prompt)
    if layout is None:
        return None
    return [[p.box for p in sorted(layout.placements(seed), key=lambda p: p.start)] for seed in seeds]


def spread_of(draws: list[list[tuple[float, ...]]]) -> dict[str, float]:
    """Std over draws of each object's centre x, y and log-size, averaged over objects; mean IoU of
    two objects of one draw."""
    stds: dict[str, list[float]] = {"cx": [], "cy": [], "log_size": []}
    for obj in range(len(draws[0])):
        boxes = [d[obj] for d in draws]
        stds["cx"].append(statistics.pstdev((b[0] + b[2]) / 2 for b in boxes))
        stds["cy"].append(statistics.pstdev((b[1] + b[3]) / 2 for b in boxes))
        stds["log_size"].append(statistics.pstdev(math.log(max(b[2] - b[0], b[3] - b[1], 1e-3)) for b in boxes))
    ious = [iou(a, b) for d in draws for a, b in itertools.combinations(d, 2)]
    return {**{k: statistics.fmean(v) for k, v in stds.items()}, "iou": statistics.fmean(ious)}


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def sample(model: Any, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 3.0) -> list:
    """Image k: prompts[k] at seeds[k], the CLI's sampler, the predictor's layout, the base size."""
    from diffgen.sampling.generate import generate
    from diffgen.sampling.images import to_pil
    from diffgen.sampling.tasks import ImageTask

    tasks = [ImageTask(index=k, prompt=p, seed=s, steps=steps, guidance=guidance, upscale=False)
             for k, (p, s) in enumerate(zip(prompts, seeds))]
    with torch.inference_mode():
        return [to_pil(image[None])[0] for _, image, _ in generate(model, tasks, 8)]


def feature_distance(bench: Bench, images: list) -> float:
    """Mean pairwise Euclidean distance between the images' shape-judge features."""
    from diffgen.emoji.judge import pil_batch

    with torch.no_grad():
        features = bench.judge().features(pil_batch(images))
    return torch.pdist(features).mean().item()


def mask_distance(images: list) -> float:
    """Mean over pairs of images of 1 - IoU of their foregrounds (the pixels that differ from the
    image's background): where things are drawn, which the judge's pooled features do not see."""
    import numpy as np

    from diffgen.emoji.matching import background_colour, object_mask

    masks = []
    for image in images:
        pixels = np.asarray(image.convert("RGB"))
        masks.append(object_mask(pixels, background_colour(pixels)))
    distances = [1 - (a & b).sum() / max(1, (a | b).sum()) for a, b in itertools.combinations(masks, 2)]
    return float(statistics.fmean(distances))


def one_background(image: Any, grey: int = 128) -> Any:
    """``image`` with the pixels near its background colour made one grey: the seeds' background
    colours differ more than anything else, and would hide how the objects vary."""
    import numpy as np
    from PIL import Image

    from diffgen.emoji.matching import background_colour, object_mask

    pixels = np.array(image.convert("RGB"))
    pixels[~object_mask(pixels, background_colour(pixels))] = grey
    return Image.fromarray(pixels)


def cmd_variety(args: argparse.Namespace, model: Any, bench: Bench) -> dict:
    seeds = list(range(args.seeds))
    cases = [(names, form) for names in bench.seen_groups(2, args.prompts, 1) for form in PAIR_FORMS] + \
        [(names, form) for names in bench.seen_groups(3, args.prompts, 2) for form in TRIPLE_FORMS]
    rows: dict[str, dict[str, list[dict[str, float]]]] = {}
    for names, form in cases:
        kind = f"{len(names)}: {form}"
        prompt = prompt_of(bench, names, form)
        real = [bench.real(names, form, 1000 + s) for s in seeds]
        drawn = drawn_boxes(model, prompt, seeds)
        entry = rows.setdefault(kind, {"generated": [], "real": []})
        entry["real"].append(spread_of([boxes for _, boxes in real]))
        laid_out = drawn is not None and all(len(d) == len(names) for d in drawn)
        if laid_out:
            entry["generated"].append(spread_of(drawn))
        if args.images:
            for side, images in (("real", [image for image, _ in real]),
                                 ("generated", sample(model, [prompt] * len(seeds), seeds) if laid_out else [])):
                if images:
                    entry[side][-1]["features"] = feature_distance(bench, images)
                    entry[side][-1]["masks"] = mask_distance(images)
                    entry[side][-1]["objects_features"] = feature_distance(bench, [one_background(i) for i in images])
        print(f"{kind}: {prompt!r}: predictor {'found ' + str(len(drawn[0])) if drawn else 'found <2'} objects",
              flush=True)
    summary: dict[str, Any] = {}
    for kind, entry in rows.items():
        summary[kind] = {side: {k: round(statistics.fmean(r[k] for r in entry[side]), 4) for k in entry[side][0]}
                         | {"prompts": len(entry[side])} if entry[side] else {"prompts": 0}
                         for side in ("generated", "real")}
    return summary


def judged(bench: Bench, image: Any, names: tuple[str, ...], boxes: list[tuple[float, ...]]) -> list[int]:
    """The judge's rank of each named concept in its box (with a margin), and the sprite matcher's."""
    from PIL import Image

    from diffgen.emoji.judge import JUDGE_SIZE, pil_batch
    from diffgen.emoji.matching import SpriteMatcher
    from diffgen.emoji.scorecard import region_square

    size = image.width
    if not hasattr(bench, "matcher"):
        bench.matcher = SpriteMatcher(bench.sprites, size)  # type: ignore[attr-defined]
    crops, sprite = [], []
    for name, box in zip(names, boxes):
        pixels = tuple(round(min(max(v + d * MARGIN, 0.0), 1.0) * size) for v, d in zip(box, (-1, -1, 1, 1)))
        extent = max(box[2] - box[0], box[3] - box[1]) * size
        room = min(pixels[2] - pixels[0], pixels[3] - pixels[1])  # the matcher needs the sprite to fit
        extents = tuple(sorted({max(4, min(room, round(extent * f))) for f in (0.85, 1.0, 1.15)}))
        sprite.append(bench.matcher.match_region(image, name, pixels, extents).rank)  # type: ignore[attr-defined]
        crops.append(region_square(image, pixels).resize((JUDGE_SIZE, JUDGE_SIZE), Image.Resampling.BILINEAR))
    return bench.judge().ranks(pil_batch(crops), list(names)) + sprite


def rates(ranks: list[list[int]], n: int) -> dict[str, float]:
    judge, sprite = [r[:n] for r in ranks], [r[n:] for r in ranks]
    return {"judge_object": statistics.fmean(x == 1 for r in judge for x in r),
            "judge_all": statistics.fmean(all(x == 1 for x in r) for r in judge),
            "sprite_object": statistics.fmean(x == 1 for r in sprite for x in r),
            "sprite_all": statistics.fmean(all(x == 1 for x in r) for r in sprite), "images": len(ranks)}


def cmd_objects(args: argparse.Namespace, model: Any, bench: Bench) -> dict:
    from diffgen.emoji.groups import held_out_groups
    from diffgen.emoji.scorecard import Scorecard

    seeds = list(range(args.seeds))
    sets = {"3 seen": [(g, "row") for g in bench.seen_groups(3, args.groups, 3)],
            "4 seen": [(g, "list") for g in bench.seen_groups(4, args.groups, 4)],
            "3 held out": [(g, "row") for g in held_out_groups(bench.items, bench.held) if len(g) == 3][:args.groups],
            "4 held out": [(g, "list") for g in held_out_groups(bench.items, bench.held) if len(g) == 4][:args.groups]}
    out: dict[str, Any] = {}
    for label, cases in sets.items():
        if not cases:  # --groups 0: the pairs alone
            continue
        generated, real, found = [], [], 0
        for names, form in cases:
            prompt = prompt_of(bench, names, form)
            draws = drawn_boxes(model, prompt, seeds)
            images = sample(model, [prompt] * len(seeds), seeds)
            for k, seed in enumerate(seeds):
                image, boxes = bench.real(names, form, 2000 + seed)
                real.append(judged(bench, image, names, boxes))
                if draws is not None and len(draws[k]) == len(names):
                    found += 1
                    generated.append(judged(bench, images[k], names, draws[k]))
                else:  # the predictor did not find every object: judged in the real scene's boxes
                    generated.append(judged(bench, images[k], names, boxes))
        out[label] = {"generated": rates(generated, len(cases[0][0])), "real": rates(real, len(cases[0][0])),
                      "laid_out_by_predictor": found / max(1, len(generated)),
                      "prompts": [prompt_of(bench, n, f) for n, f in cases]}
        print(f"{label}: {out[label]['generated']} (real {out[label]['real']})", flush=True)
    if args.pairs:
        card = Scorecard(bench.sprites, bench.items, bench.judge(), bench.size, pairs=args.pairs)
        asks = card.sections["pairs_seen"]
        images = sample(model, [a.prompt for a in asks], list(range(len(asks))))
        out["pairs_seen"] = {"generated": card.judge_section("pairs_seen", images),
                             "real": card.judge_section("pairs_seen", card.real_images("pairs_seen"))}
        print(f"pairs seen: {out['pairs_seen']['generated']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("variety", "objects"))
    parser.add_argument("-c", "--checkpoint", type=Path, default=ROOT / "checkpoints" / "default.safetensors")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per prompt (variety 8, objects 2)")
    parser.add_argument("--prompts", type=int, default=4, help="variety: groups per prompt form")
    parser.add_argument("--images", action="store_true", help="variety: also the images' feature distances")
    parser.add_argument("--groups", type=int, default=4, help="objects: prompts per set")
    parser.add_argument("--pairs", type=int, default=8, help="objects: scorecard pair prompts (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scenes-bench")
    args = parser.parse_args()
    args.seeds = args.seeds or (8 if args.mode == "variety" else 2)
    torch.set_num_threads(args.threads)
    from diffgen.checkpoint import load_model

    model = load_model(args.checkpoint, "cpu", image_tower=False)
    bench = Bench(args.out, model.config.image_size)
    started = time.perf_counter()
    result = (cmd_variety if args.mode == "variety" else cmd_objects)(args, model, bench)
    name = args.checkpoint.stem if args.checkpoint.stem != "model" else args.checkpoint.parent.name
    record = {"checkpoint": str(args.checkpoint), "seeds": args.seeds, "seconds": round(time.perf_counter() - started),
              "args": {k: str(v) for k, v in vars(args).items()}, "result": result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.mode}-{name}.json").write_text(json.dumps(record, indent=1))
    if args.mode == "variety":
        print(variety_table(result))
    else:
        print(json.dumps(result, indent=1))


def variety_table(result: dict) -> str:
    """The variety summary as Markdown: generated / real per measure and prompt kind."""
    keys = ("cx", "cy", "log_size", "iou", "features", "objects_features", "masks")
    lines = ["| objects: form | prompts laid out | " + " | ".join(f"{k} gen / real" for k in keys) + " |",
             "|---" * (len(keys) + 2) + "|"]
    for kind, sides in result.items():
        g, r = sides["generated"], sides["real"]
        cells = [f"{g[k]:.3f} / {r[k]:.3f}" if k in g and k in r else "-" for k in keys]
        lines.append(f"| {kind} | {g['prompts']} / {r['prompts']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
