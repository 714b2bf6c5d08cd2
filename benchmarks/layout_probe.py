"""How far a layout takes the pair prompts: the scorecard's pairs sampled with each object's
region given to the sampler (sampling/layout.py), judged like the scorecard judges them.

The regions are the halves the scorecard judges each object in, so this measures what a perfect
layout would buy the model (an upper bound for any way of predicting one), at each attention-bias
strength and noise floor asked for. Strength 0 is plain sampling, the scorecard's own number.

Run: .venv/bin/python benchmarks/layout_probe.py checkpoints/default.safetensors --pairs 96 \
         --strengths 0,3,6 --min-sigmas 0
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
        bias = LayoutBias([prompts[k] for k in batch], [placements[k] for k in batch], spans, strength,
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
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--judge", type=Path, default=ROOT / "runs" / "speedrun" / "judge.safetensors")
    parser.add_argument("--out", type=Path, default=None, help="write a grid of each setting's images here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pair_failures import classify, load_card, readings

    model, card = load_card(args.checkpoint, args.judge, args.pairs)
    for min_sigma in [float(v) for v in args.min_sigmas.split(",")]:
        for strength in [float(v) for v in args.strengths.split(",")]:
            report: dict = {"strength": strength, "min_sigma": min_sigma}
            clock = time.perf_counter()
            for section in args.sections.split(","):
                asks = card.sections[section]
                images = sample_laid_out(model, [a.prompt for a in asks], [placements_of(card, a) for a in asks],
                                         strength, min_sigma)
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
