"""How a model's two-object pictures fail: the scorecard's pair prompts, each half named by a judge.

For "A to the left of B" / "A above B" the scorecard asks whether A is the best match in A's half
and B in B's half. This script says what is there instead, per image, with both judges (sprite
matching and the shape judge):
- both: A in A's half and B in B's half;
- swapped: B in A's half and A in B's half (the objects are right, their places are not);
- doubled: the same concept in both halves (one of the pair drawn twice, the other lost);
- one: one object right, the other half shows a third concept;
- neither: no object right.
It prints the shares for seen and held-out pairs and writes a grid of the images, captioned with
the judge's reading, so the numbers can be checked by eye.

Run: .venv/bin/python benchmarks/probes/pair_failures.py checkpoints/default.safetensors --pairs 96 \
         --out runs/pair-failures
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository, two folders up
KINDS = ("both", "swapped", "doubled", "one", "neither")


def classify(a: str, b: str, in_a: str, in_b: str) -> str:
    """The failure kind of one pair image from what each half shows."""
    if in_a == a and in_b == b:
        return "both"
    if in_a == b and in_b == a:
        return "swapped"
    if in_a == in_b and in_a in (a, b):
        return "doubled"
    if in_a == a or in_b == b:
        return "one"
    return "neither"


def readings(card, asks, images) -> dict[str, list[tuple[str, str]]]:
    """Per image, (what A's half shows, what B's half shows) by each judge."""
    from diffgen.emoji.judge import pil_batch
    from diffgen.emoji.scorecard import region_square

    sprite, crops = [], []
    for ask, image in zip(asks, images, strict=True):
        halves = []
        for obj in ask.objects:
            halves.append(card.matcher.match_region(image, obj.concept, obj.box, obj.extents).best)
            crops.append(region_square(image, obj.judge_box or obj.box))
        sprite.append(tuple(halves))
    with torch.no_grad():
        best = card.judge(pil_batch(crops)).argmax(dim=1).tolist()
    names = [card.judge.names[i] for i in best]
    return {"sprite": sprite, "judge": list(zip(names[0::2], names[1::2], strict=True))}


def load_card(checkpoint: Path, judge_path: Path, pairs: int):
    """(model, scorecard with the cached shape judge) for ``pairs`` seen and held-out pairs each."""
    from diffgen.checkpoint import load_model
    from diffgen.emoji.judge import load_judge
    from diffgen.emoji.scenes import concepts, find_font, render_sprites
    from diffgen.emoji.scorecard import Scorecard

    items = concepts()
    judge, _ = load_judge(judge_path)
    model = load_model(checkpoint, torch.device("cpu"), image_tower=False)
    return model, Scorecard(render_sprites(find_font(), items), items, judge, model.config.image_size, pairs=pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--pairs", type=int, default=96, help="seen and held-out pairs each")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--judge", type=Path, default=ROOT / "runs/speedrun/judge.safetensors",
                        help="the speedrun's cached shape judge")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/pair-failures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffgen.emoji.scorecard import sample_section
    from diffgen.sampling.images import labelled_grid

    model, card = load_card(args.checkpoint, args.judge, args.pairs)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(args.checkpoint), "steps": args.steps, "guidance": args.guidance}
    for section in ("pairs_seen", "pairs_heldout"):
        asks = card.sections[section]
        images = sample_section(model, asks, args.steps, args.guidance)
        report[section] = {}
        reads = readings(card, asks, images)
        labels = [f"{ask.prompt} | reads: {a} / {b}" for ask, (a, b) in zip(asks, reads["sprite"], strict=True)]
        labelled_grid(images, labels, columns=12, cell=96).save(args.out / f"{section}.png")
        for label, rows in reads.items():
            kinds = Counter(classify(ask.objects[0].concept, ask.objects[1].concept, *row)
                            for ask, row in zip(asks, rows, strict=True))
            report[section][label] = {k: round(kinds[k] / len(asks), 3) for k in KINDS}
            if label == "sprite":
                report[section]["images"] = [
                    {"prompt": ask.prompt, "reads": list(row),
                     "kind": classify(ask.objects[0].concept, ask.objects[1].concept, *row)}
                    for ask, row in zip(asks, rows, strict=True)]
        print(section, json.dumps({k: v for k, v in report[section].items() if k != "images"}))
    (args.out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
