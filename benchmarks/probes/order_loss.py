"""Does a model know which object goes where? Read from its denoising loss, without sampling.

A conditional diffusion model is also a classifier (Li et al. 2023, "Your diffusion model is
secretly a zero-shot classifier"): the caption that explains an image best is the one under which
the model denoises it with the lowest loss. For each pair prompt of the scorecard ("A to the left
of B", "A above B", seen and held-out pairs), the data's own picture of it is noised at fixed noise
levels and denoised under three captions, with the same noise for all three:
- the true caption;
- the swapped caption ("B to the left of A"): the same objects in the other places;
- a wrong-object caption ("A to the left of C", C a random third concept).
"order" is the share of images whose summed loss is lower under the true caption than under the
swapped one, "objects" the same against the wrong object; chance is 0.5 for both. A model that
draws the right objects in the wrong places (pair_failures.py's "swapped") scores high on objects
and near 0.5 on order. The numbers come from real images and paired noise, so they are far less
noisy than sampled pictures judged by a matcher, and they cost no sampler steps.

At those noise levels the noisy picture already shows where each object is, so the caption barely
moves the loss. Where the sampler decides the layout (sigma 8 to 80) the denoiser's estimate is
close to the mean of the pictures the caption allows, and "layout" asks whether it depends on the
order of the words the way the pictures do: the cosine between D(x; true) - D(x; swapped) and
picture(true) - picture(swapped), the two pictures drawn with the same background and layout.
About 0 for a model blind to the order, positive when the named order moves the objects to their
places. A perfect model stays below 1, its estimate blurred over the layouts the data varies:
"layout_ceiling" is the same cosine for the mean of 16 other pictures of each caption, and
"layout_se" the standard error of the mean cosine over the pairs.

"attention" looks one step earlier, at the U-Net's cross-attention (training/grounding.py): at
each of LAYOUT_SIGMAS, the share of images where the two names' attention, averaged over the
cross-attention blocks, comes more from inside their own objects' boxes than from inside each
other's (chance 0.5). A model can route the words to their places in attention before its
pictures follow.

Run: .venv/bin/python benchmarks/probes/order_loss.py checkpoints/default.safetensors [other.safetensors ...]
     [--measures layout]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

SIGMAS = (0.5, 1.0, 2.0, 4.0)  # coarse structure of a 64 px scene (not the finest detail)
LAYOUT_SIGMAS = (80.0, 20.0, 8.0)  # where the sampler places the objects


@torch.inference_mode()
def caption_losses(model, images: torch.Tensor, captions: list[list[str]], draws: int, seed: int = 0
                   ) -> torch.Tensor:
    """(images, captions per image) denoising losses (the training loss, training/stages.py) summed
    over SIGMAS x ``draws`` noise samples, the same noise for every caption of an image."""
    from diffgen.engine.denoiser import denoising_loss

    gen = torch.Generator().manual_seed(seed)
    n, k = images.shape[0], len(captions[0])
    conds = [model.encode_prompts([row[j] for row in captions])[0] for j in range(k)]
    total = torch.zeros(n, k)
    for sigma in SIGMAS:
        levels = torch.full((n,), sigma)
        for _ in range(draws):
            noisy = images + sigma * torch.randn(images.shape, generator=gen)
            for j, cond in enumerate(conds):
                total[:, j] += denoising_loss(model.denoiser, noisy, levels, images, cond)
    return total


def order_scores(model, card, section: str, draws: int, batch: int = 32) -> dict[str, float]:
    """The section's order and object accuracies (see the module docstring)."""
    from diffgen.emoji.scorecard import PAIR_RELATIONS
    from diffgen.sampling.images import from_pil

    asks = card.sections[section]
    reals = card.real_images(section)
    rng = random.Random(1)
    rows = []  # per image: true, swapped, wrong-object caption
    for ask in asks:
        a, b = (card.by_name[o.concept] for o in ask.objects)
        third = rng.choice([c for c in card.items if c.name not in (a.name, b.name)])
        words = PAIR_RELATIONS[ask.relation]
        rows.append([f"{x.with_article()} {words} {y.with_article()}" for x, y in ((a, b), (b, a), (a, third))])
        assert rows[-1][0] == ask.prompt
    losses = []
    for start in range(0, len(asks), batch):
        images = torch.stack([from_pil(im, card.size) for im in reals[start:start + batch]])
        losses.append(caption_losses(model, images, rows[start:start + batch], draws, seed=start))
    total = torch.cat(losses)
    return {"order": round((total[:, 0] < total[:, 1]).float().mean().item(), 3),
            "objects": round((total[:, 0] < total[:, 2]).float().mean().item(), 3),
            "swap_gap": round((total[:, 1] - total[:, 0]).mean().item() / (len(SIGMAS) * draws), 4),
            "images": len(asks)}


@torch.inference_mode()
def layout_scores(model, card, section: str, batch: int = 32) -> dict[str, float]:
    """The section's layout cosine at each of LAYOUT_SIGMAS (see the module docstring)."""
    from diffgen.emoji.scorecard import PAIR_RELATIONS
    from diffgen.engine.denoiser import Conditioning
    from diffgen.sampling.images import from_pil

    asks = card.sections[section]
    captions, true, swapped = [], [], []
    for k, ask in enumerate(asks):
        a, b = (card.by_name[o.concept] for o in ask.objects)
        words = PAIR_RELATIONS[ask.relation]
        captions.append([f"{x.with_article()} {words} {y.with_article()}" for x, y in ((a, b), (b, a))])
        for pictures, (x, y) in ((true, (a, b)), (swapped, (b, a))):  # same seed: same background, layout
            pictures.append(from_pil(card.composer.pair_scene(random.Random(k), x, y, ask.relation).image, card.size))
    true_t, swapped_t = torch.stack(true), torch.stack(swapped)
    real_gap = (true_t - swapped_t).flatten(1)
    mean_gap = torch.zeros_like(real_gap)
    for draw in range(16):  # other backgrounds and layouts: the picture a caption means, on average
        for k, ask in enumerate(asks):
            a, b = (card.by_name[o.concept] for o in ask.objects)
            rng = random.Random(10_000 * (draw + 1) + k)
            pair = [from_pil(card.composer.pair_scene(random.Random(rng.random()), x, y, ask.relation).image,
                             card.size) for x, y in ((a, b), (b, a))]
            mean_gap[k] += (pair[0] - pair[1]).flatten() / 16
    conds = [model.encode_prompts([row[j] for row in captions])[0] for j in range(2)]
    gen = torch.Generator().manual_seed(0)
    out = {}
    for sigma in LAYOUT_SIGMAS:
        noisy = true_t + sigma * torch.randn(true_t.shape, generator=gen)
        estimates = []
        for cond in conds:
            estimates.append(torch.cat([
                model.denoiser(noisy[i:i + batch], torch.full((len(noisy[i:i + batch]),), sigma),
                               Conditioning(cond.tokens[i:i + batch], cond.pooled[i:i + batch]))
                for i in range(0, len(noisy), batch)]))
        model_gap = (estimates[0] - estimates[1]).flatten(1)
        cosine = torch.nn.functional.cosine_similarity(model_gap, real_gap, dim=1)
        out[f"layout@{sigma:g}"] = round(cosine.mean().item(), 3)
        out[f"layout_se@{sigma:g}"] = round(cosine.std().item() / len(cosine) ** 0.5, 3)  # over the pairs
    out["layout_ceiling"] = round(torch.nn.functional.cosine_similarity(mean_gap, real_gap, dim=1).mean().item(), 3)
    return out


@torch.inference_mode()
def attention_scores(model, card, section: str, batch: int = 32) -> dict[str, float]:
    """The section's attention order at each of LAYOUT_SIGMAS (see the module docstring)."""
    from diffgen.data import TrainingSet
    from diffgen.engine.regions import GroundingTargets, TokenSpans
    from diffgen.sampling.images import from_pil
    from diffgen.training.grounding import grounding_targets, inside_shares, kept_attention

    scenes = []
    for k, ask in enumerate(card.sections[section]):
        a, b = (card.by_name[o.concept] for o in ask.objects)
        scenes.append(card.composer.pair_scene(random.Random(k), a, b, ask.relation))
    captions = [scene.captions[0] for scene in scenes]  # "A <relation> B" with the scene's own words
    data = TrainingSet(torch.stack([from_pil(s.image, card.size) for s in scenes]), [(c,) for c in captions],
                       [], None, [{c: tuple(s.regions[0])} for c, s in zip(captions, scenes)])
    text, unet = model.text_encoder, model.denoiser.net
    spans = TokenSpans(text.tokenizer, text.context_length)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for sigma in LAYOUT_SIGMAS:
        right = []
        for start in range(0, len(scenes), batch):
            idx = list(range(start, min(start + batch, len(scenes))))
            targets = grounding_targets(data, idx, captions[start:start + batch], spans, torch.device("cpu"))
            if targets.rows.tolist() != [row for row in range(len(idx)) for _ in (0, 1)]:
                raise RuntimeError("every pair caption should name its two objects once each")
            swapped = GroundingTargets(targets.rows, targets.tokens,
                                       [targets.boxes[k ^ 1] for k in range(len(targets.boxes))])
            x0 = data.images[idx]
            cond = model.encode_prompts(captions[start:start + batch])[0]
            with kept_attention(unet.cross_attentions()) as kept:
                model.denoiser(x0 + sigma * torch.randn(x0.shape, generator=gen), torch.full((len(idx),), sigma), cond)
            own = torch.stack([inside_shares(block, targets) for block in kept]).mean(0).view(-1, 2).sum(1)
            other = torch.stack([inside_shares(block, swapped) for block in kept]).mean(0).view(-1, 2).sum(1)
            right.append(own > other)
        out[f"attention@{sigma:g}"] = round(torch.cat(right).float().mean().item(), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--pairs", type=int, default=96, help="seen and held-out pairs each")
    parser.add_argument("--draws", type=int, default=2, help="noise samples per noise level")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measures", default="order,layout,attention",
                        help="which of order, layout and attention to report (comma-separated)")
    args = parser.parse_args()
    measures = {"order": lambda m, c, s: order_scores(m, c, s, args.draws), "layout": layout_scores,
                "attention": attention_scores}
    chosen = [name.strip() for name in args.measures.split(",")]
    if unknown := [name for name in chosen if name not in measures]:
        parser.error(f"unknown measure(s) {', '.join(unknown)}; choose from {', '.join(measures)}")
    torch.set_num_threads(args.threads)

    from diffgen.checkpoint import load_model
    from diffgen.emoji.scenes import concepts, find_font, render_sprites
    from diffgen.emoji.scorecard import Scorecard

    items = concepts()
    sprites = render_sprites(find_font(), items)
    for path in args.checkpoints:
        model = load_model(path, torch.device("cpu"), image_tower=False)
        card = Scorecard(sprites, items, None, model.config.image_size, pairs=args.pairs)
        report = {section: {k: v for name in chosen for k, v in measures[name](model, card, section).items()}
                  for section in ("pairs_seen", "pairs_heldout")}
        print(json.dumps({"checkpoint": str(path), **report}))


if __name__ == "__main__":
    main()
