"""How far a layout takes the pair prompts: the scorecard's pairs sampled with each object's
region given to the sampler (the CLI's --place: sampling/layout.py), judged like the scorecard
judges them.

The regions are the halves the scorecard judges each object in, so this measures what a perfect
layout would buy the model (an upper bound for any way of predicting one), at each attention-bias
strength asked for. Strength 0 is plain sampling, the scorecard's own number. Images come from
``diffgen.sampling.generate`` with the CLI's sampler settings (image k from seed k, at the base
size), the bias at every step as the CLI applies it.

With ``--boxes predicted`` the boxes are instead the model's layout predictor's for image k's seed
(sampling/predicted_layout.py), optionally scaled about their centres (``--box-scales``): at scale 1
and strength 6 that is the CLI's default sampling.

Run: .venv/bin/python benchmarks/probes/layout_probe.py checkpoints/default.safetensors --pairs 96 \
         --strengths 0,3,6
     .venv/bin/python benchmarks/probes/layout_probe.py checkpoints/default.safetensors --pairs 96 \
         --boxes predicted --box-scales 1,1.3 --strengths 6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository, two folders up


def placements_of(card, ask):
    """Each object's name span in the prompt and the region it is judged in, as fractions."""
    from diffgen.engine.regions import Placement

    out, offset = [], 0
    for obj in ask.objects:
        phrase = card.by_name[obj.concept].with_article()
        at = ask.prompt.index(phrase, offset)
        offset = at + len(phrase)
        start = at + (phrase.index(" ") + 1 if phrase.split(" ", 1)[0] in ("a", "an") else 0)
        x0, y0, x1, y1 = obj.box
        out.append(Placement(start, offset, (x0 / card.size, y0 / card.size, x1 / card.size, y1 / card.size)))
    return out


def predicted_placements(model, prompt: str, seed: int, scale: float):
    """The layout predictor's placements for image ``seed`` of ``prompt``, each box scaled about its
    centre by ``scale`` and kept inside the image (none where the predictor finds fewer than two objects)."""
    from dataclasses import replace

    from diffgen.sampling.predicted_layout import predict_layout

    guess = predict_layout(model, prompt)
    out = []
    for place in guess.placements(seed) if guess is not None else []:
        x0, y0, x1, y1 = place.box
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * scale, (y1 - y0) / 2 * scale
        out.append(replace(place, box=(max(0.0, cx - hw), max(0.0, cy - hh), min(1.0, cx + hw), min(1.0, cy + hh))))
    return out


def layout_of(prompt: str, placements, strength: float):
    """The CLI's layout (``--place NAME=BOX`` per object) for ``placements``; None for plain sampling
    (strength 0, or no placements). A name that occurs earlier in the prompt (a "corn" inside
    "unicorn") is placed there, as the CLI would place it: such prompts are reported on stderr."""
    from diffgen.sampling.layout import Layout

    if strength == 0 or not placements:
        return None
    layout = Layout(tuple((prompt[p.start:p.end], *p.box) for p in placements), strength)
    if layout.placements(prompt) != list(placements):
        print(f"note: a name of {prompt!r} occurs earlier in it; the CLI's layout places that one", file=sys.stderr)
    return layout


def sample(model, prompts: list[str], layouts, steps: int = 20, guidance: float = 3.0, batch_size: int = 16):
    """Image k of ``prompts`` from seed k with the CLI's sampler settings and image k's layout (no
    predicted layout where none is given), at the model's base size."""
    from diffgen.sampling.generate import generate
    from diffgen.sampling.images import to_pil
    from diffgen.sampling.tasks import ImageTask

    tasks = [ImageTask(index=k, prompt=prompt, seed=k, steps=steps, guidance=guidance, layout=layout,
                       auto_layout=False, upscale=False)
             for k, (prompt, layout) in enumerate(zip(prompts, layouts, strict=True))]
    with torch.inference_mode():
        return [to_pil(image[None])[0] for _, image, _ in generate(model, tasks, batch_size=batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--pairs", type=int, default=96, help="seen and held-out pairs each")
    parser.add_argument("--strengths", default="0,3,6", help="attention-logit biases to try (comma-separated)")
    parser.add_argument("--sections", default="pairs_seen,pairs_heldout")
    parser.add_argument("--boxes", choices=("given", "predicted"), default="given",
                        help="the judging regions, or the model's layout predictor's boxes for image k's seed")
    parser.add_argument("--box-scales", default="1", help="with --boxes predicted: scale each box about its "
                        "centre by these factors (comma-separated; kept inside the image)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--judge", type=Path, default=ROOT / "runs" / "speedrun" / "judge.safetensors")
    parser.add_argument("--out", type=Path, default=None, help="write a grid of each setting's images here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pair_failures import classify, load_card, readings

    model, card = load_card(args.checkpoint, args.judge, args.pairs)
    settings = [(s, b) for s in args.strengths.split(",")
                for b in (args.box_scales.split(",") if args.boxes == "predicted" else ["1"])]
    for strength, scale in ((float(s), float(b)) for s, b in settings):
        report: dict = {"strength": strength, "boxes": args.boxes, "box_scale": scale}
        clock = time.perf_counter()
        for section in args.sections.split(","):
            asks = card.sections[section]
            places = [placements_of(card, a) for a in asks] if args.boxes == "given" else \
                [predicted_placements(model, a.prompt, k, scale) for k, a in enumerate(asks)]
            images = sample(model, [a.prompt for a in asks],
                            [layout_of(a.prompt, p, strength) for a, p in zip(asks, places, strict=True)])
            scores = card.judge_section(section, images)
            kinds = {label: Counter(classify(a.objects[0].concept, a.objects[1].concept, *r)
                                    for a, r in zip(asks, found, strict=True))
                     for label, found in readings(card, asks, images).items()}
            report[section] = {"both_sprite": scores["sprite_all"], "both_judge": scores["judge_all"],
                               **{f"{label}_{k}": round(n / len(asks), 3) for label, c in kinds.items()
                                  for k, n in c.items()}}
            if args.out is not None:
                from diffgen.sampling.images import labelled_grid, save_png
                save_png(labelled_grid(images[:32], [a.prompt for a in asks[:32]]),
                         args.out / f"{section}-s{strength:g}-x{scale:g}.png")
        report["seconds"] = round(time.perf_counter() - clock, 1)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
