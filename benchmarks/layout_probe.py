"""How far a layout takes the pair prompts: the scorecard's pairs sampled with each object's
region given to the sampler (sampling/layout.py), judged like the scorecard judges them.

The regions are the halves the scorecard judges each object in, so this measures what a perfect
layout would buy the model (an upper bound for any way of predicting one), at each attention-bias
strength and noise floor asked for. Strength 0 is plain sampling, the scorecard's own number.

With ``--boxes predicted`` the boxes are instead the model's layout predictor's for image k's seed
(sampling/predicted_layout.py), optionally scaled about their centres (``--box-scales``): at scale 1
that is the CLI's default sampling.

Run: .venv/bin/python benchmarks/layout_probe.py checkpoints/default.safetensors --pairs 96 \
         --strengths 0,3,6 --min-sigmas 0
     .venv/bin/python benchmarks/layout_probe.py checkpoints/default.safetensors --pairs 96 \
         --boxes predicted --box-scales 1,1.3 --strengths 6
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def placements_of(card, ask):
    """Each object's name span in the prompt and the region it is judged in, as fractions."""
    from diffgen.sampling.layout import Placement

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


def sample_laid_out(model, prompts, placements, strength: float, min_sigma: float, steps: int = 20,
                    guidance: float = 3.0, batch_size: int = 16):
    """Image k from seed k with the CLI's sampler settings and the layout's attention bias."""
    from diffgen.engine.guidance import classifier_free_guidance
    from diffgen.engine.model import PromptCache
    from diffgen.engine.samplers import SAMPLERS, seeded_noise_sampler
    from diffgen.engine.schedule import SCHEDULES
    from diffgen.sampling.generate import channels_last
    from diffgen.sampling.images import to_pil
    from diffgen.sampling.layout import LayoutBias, laid_out
    from diffgen.sampling.settings import DEFAULTS
    from diffgen.training.grounding import TokenSpans

    cfg, text_model = model.config, model.text_encoder
    spans = TokenSpans(text_model.tokenizer, text_model.context_length)
    text = PromptCache(text_model, weighted=True)
    text.encode_all(list(prompts) + [""])
    size, channels = cfg.image_size, cfg.unet.in_channels
    images = []
    for first in range(0, len(prompts), batch_size):
        batch = list(range(first, min(first + batch_size, len(prompts))))
        generators = [torch.Generator().manual_seed(k) for k in batch]
        sigmas = SCHEDULES[DEFAULTS.schedule](steps, model.denoiser.sigma_min, model.denoiser.sigma_max)
        x = torch.stack([torch.randn(channels, size, size, generator=g) for g in generators]) * sigmas[0].item()
        denoise = channels_last(classifier_free_guidance(
            model.denoiser, text([prompts[k] for k in batch]), text([""] * len(batch)), guidance))
        bias = LayoutBias.of([prompts[k] for k in batch], [placements[k] for k in batch], spans, strength,
                             torch.device("cpu"))
        with torch.inference_mode(), laid_out(model.denoiser.net, denoise, bias, min_sigma) as biased:
            out = SAMPLERS[DEFAULTS.sampler](biased, x, sigmas, seeded_noise_sampler(generators, x), None)
        images += to_pil(out.float())
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--pairs", type=int, default=96, help="seen and held-out pairs each")
    parser.add_argument("--strengths", default="0,3,6", help="attention-logit biases to try (comma-separated)")
    parser.add_argument("--min-sigmas", default="0", help="noise floors of the bias (comma-separated)")
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
    settings = [(m, s, b) for m in args.min_sigmas.split(",") for s in args.strengths.split(",")
                for b in (args.box_scales.split(",") if args.boxes == "predicted" else ["1"])]
    for min_sigma, strength, scale in ((float(m), float(s), float(b)) for m, s, b in settings):
        report: dict = {"strength": strength, "min_sigma": min_sigma, "boxes": args.boxes, "box_scale": scale}
        clock = time.perf_counter()
        for section in args.sections.split(","):
            asks = card.sections[section]
            places = [placements_of(card, a) for a in asks] if args.boxes == "given" else \
                [predicted_placements(model, a.prompt, k, scale) for k, a in enumerate(asks)]
            images = sample_laid_out(model, [a.prompt for a in asks], places, strength, min_sigma)
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
                         args.out / f"{section}-s{strength:g}-m{min_sigma:g}.png")
        report["seconds"] = round(time.perf_counter() - clock, 1)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
