"""Are single emoji objects recognisable? Each concept's prompt ("a cat") is sampled, and every
image is template-matched against all the concept sprites at the data's sizes and every place
(diffgen/emoji/matching.py): top-1 / top-5 says how often the prompted sprite is the closest, IoU how
well the object's silhouette covers the prompted sprite's. The same measurement on real
single-object scenes (drawn by the data composer at random sizes, places and backgrounds) is the
ceiling. Image k uses seed k, concepts in the order of the concept table.

Run: .venv/bin/python benchmarks/sprite_match.py [-c CKPT] [--seeds 1] [--font PATH] [--out DIR] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch

from diffgen.checkpoint import default_checkpoint, load_model
from diffgen.devices import pick_device
from diffgen.emoji.matching import Match, SpriteMatcher
from diffgen.emoji.scenes import SceneComposer, concepts, find_font, render_sprites
from diffgen.sampling.generate import ImageTask, generate
from diffgen.sampling.images import to_pil

COMMON = ("cat", "apple", "dog", "car", "house", "tree", "banana", "airplane")


def summary(matches: dict[str, list[Match]]) -> dict[str, float]:
    flat = [m for ms in matches.values() for m in ms]
    return {"images": len(flat), "top1": sum(m.rank == 1 for m in flat) / len(flat),
            "top5": sum(m.rank <= 5 for m in flat) / len(flat),
            "mean_iou": statistics.fmean(m.iou for m in flat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--checkpoint", type=Path, default=None)
    parser.add_argument("--font", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=1, help="images per concept")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("-g", "--guidance", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None, help="also write results.json here")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = parser.parse_args()
    items = concepts()
    sprites = render_sprites(find_font(args.font), items)
    model = load_model(args.checkpoint or default_checkpoint(), pick_device(args.device))
    size = model.config.image_size
    composer = SceneComposer(sprites, items, size, held_out=set())
    matcher = SpriteMatcher(sprites, size)
    rng = random.Random(0)

    real: dict[str, list[Match]] = {c.name: [] for c in items}
    generated: dict[str, list[Match]] = {c.name: [] for c in items}
    for c in items:
        for _ in range(args.seeds):
            image = composer.single_scene(rng, c).image
            real[c.name].append(matcher.match(image, c.name))
    tasks = [ImageTask(index=k, prompt=c.with_article(), seed=k, steps=args.steps, guidance=args.guidance,
                       upscale=False)
             for k, c in enumerate(c for c in items for _ in range(args.seeds))]
    names = [c.name for c in items for _ in range(args.seeds)]
    with torch.inference_mode():
        for task, image, _ in generate(model, tasks, batch_size=8):
            generated[names[task.index]].append(matcher.match(to_pil(image[None])[0], names[task.index]))

    results = {"real": summary(real), "generated": summary(generated),
               "common": {n: [m.__dict__ for m in generated[n]] for n in COMMON},
               "recognised": sorted(n for n, ms in generated.items() if any(m.rank == 1 for m in ms)),
               "concepts": len(items), "seeds": args.seeds, "steps": args.steps, "guidance": args.guidance}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    chance = 1 / len(items)
    print(f"{len(items)} concepts x {args.seeds} image(s), dpmpp-2m {args.steps} steps, guidance {args.guidance}; "
          f"chance top-1 {chance:.3f}, top-5 {5 * chance:.3f}\n")
    print("| images | top-1 | top-5 | mean silhouette IoU |")
    print("|---|---|---|---|")
    for label in ("real", "generated"):
        r = results[label]
        print(f"| {label} | {r['top1']:.3f} | {r['top5']:.3f} | {r['mean_iou']:.3f} |")
    print("\nCommon objects (generated; rank of the prompted sprite among all, silhouette IoU):")
    for n in COMMON:
        print(f"- {n}: " + ", ".join(f"rank {m.rank} (closest: {m.best}), IoU {m.iou:.2f}" for m in generated[n]))
    print(f"\nTop-1 for {len(results['recognised'])} of {len(items)} concepts: {', '.join(results['recognised'])}")


if __name__ == "__main__":
    main()
