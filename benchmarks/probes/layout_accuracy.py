"""How well a model's layout predictor reads the scorecard's prompts, without sampling an image.

For each prompt of the scorecard (singles, seen and held-out pairs, the showcase's words) it asks
the predictor (sampling/predicted_layout.py) for the layout the sampler would use with seed k
(image k of a section uses seed k, as in the scorecard), and counts:
- singles: prompts left without a layout (they must be all: one object is sampled as before);
- pairs and showcase: prompts whose two objects are both found, named by exactly their words, with
  each box's centre inside the region the scorecard judges that object in ("placed").
It also writes the mean box of each relation's first and second object.

Run: .venv/bin/python benchmarks/probes/layout_accuracy.py checkpoints/default.safetensors --pairs 96
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def object_words(card, concept: str) -> str:
    """The words that name ``concept`` in the scorecard's prompts (its phrase without the article)."""
    phrase = card.by_name[concept].with_article()
    first, _, rest = phrase.partition(" ")
    return rest if first in ("a", "an") and rest else phrase


def inside(box, region, size: int) -> bool:
    cx, cy = (box[0] + box[2]) / 2 * size, (box[1] + box[3]) / 2 * size
    return region[0] <= cx < region[2] and region[1] <= cy < region[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--pairs", type=int, default=96, help="seen and held-out pairs each")
    parser.add_argument("--showcase-seeds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the report here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffgen.checkpoint import load_model
    from diffgen.emoji.scenes import concepts, find_font, render_sprites
    from diffgen.emoji.scorecard import Scorecard
    from diffgen.sampling.predicted_layout import predict_layout

    items = concepts()
    model = load_model(args.checkpoint, torch.device("cpu"), image_tower=False)
    # the judge is not needed: only the prompts and the regions they are judged in
    card = Scorecard(render_sprites(find_font(), items), items, None, model.config.image_size, pairs=args.pairs,
                     showcase_seeds=args.showcase_seeds)
    size = card.size
    report: dict = {"checkpoint": str(args.checkpoint)}
    singles = card.sections["singles"]
    laid = [ask.prompt for ask in singles if predict_layout(model, ask.prompt) is not None]
    report["singles"] = {"prompts": len(singles), "without_layout": 1 - len(laid) / len(singles),
                         "laid_out": laid[:20]}
    print("singles", json.dumps(report["singles"]))
    for section in ("pairs_seen", "pairs_heldout", "showcase_words"):
        asks = card.sections[section]
        found = placed = 0
        boxes: dict[str, list[list[tuple[float, ...]]]] = {}
        misses = []
        for k, ask in enumerate(asks):
            guess = predict_layout(model, ask.prompt)
            names = [object_words(card, obj.concept) for obj in ask.objects]
            if guess is None or [ask.prompt[s:e] for s, e in guess.spans] != names:
                misses.append({"prompt": ask.prompt, "objects": [] if guess is None else
                               [ask.prompt[s:e] for s, e in guess.spans]})
                continue
            found += 1
            places = guess.placements(k)
            boxes.setdefault(ask.relation or "", []).append([p.box for p in places])
            placed += all(inside(p.box, obj.box, size) for p, obj in zip(places, ask.objects, strict=True))
        means = {relation: [[round(sum(b[i][j] for b in rows) / len(rows), 3) for j in range(4)] for i in range(2)]
                 for relation, rows in boxes.items()}
        report[section] = {"prompts": len(asks), "found": found / len(asks), "placed": placed / len(asks),
                           "mean_boxes": means, "misses": misses[:20]}
        print(section, json.dumps({k: v for k, v in report[section].items() if k != "misses"}),
              f"misses: {misses[:3]}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
