"""Does a model's text encoder tell "A to the left of B" from "B to the left of A"?

For pair prompts in the scorecard's two relations ("to the left of", "above"), over the first
--pairs held-out pairs and --pairs random concept pairs, the cosine similarity between the
encodings of a prompt and of the same prompt with its objects swapped:
the pooled embedding, and the state of each token in one prompt against the same token (the k-th
occurrence of the same word) in the other. Near 1.0 the encoder gives the same bag of states in
another order: the U-Net's cross-attention, which sees no token positions of its own, is left to
guess which object goes where.

Run: .venv/bin/python benchmarks/probes/text_order.py checkpoints/default.safetensors [other.safetensors ...]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F


def order_similarity(model, prompts: list[tuple[str, str]]) -> dict[str, float]:
    """Mean cosine of (prompt, swapped prompt) encodings: pooled, and token states over the
    positions both prompts fill."""
    encoder = model.text_encoder
    with torch.inference_mode():
        first = encoder.encode([p for p, _ in prompts])
        second = encoder.encode([q for _, q in prompts])
    pooled = F.cosine_similarity(first.pooled, second.pooled, dim=-1)
    token_means = []
    for i in range(len(prompts)):
        a, b = _occurrences(first.ids[i], first.num_tokens[i]), _occurrences(second.ids[i], second.num_tokens[i])
        rows = [(a[key], b[key]) for key in a.keys() & b.keys()]
        pa, pb = torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])
        token_means.append(F.cosine_similarity(first.tokens[i, pa], second.tokens[i, pb], dim=-1).mean())
    return {"pooled": round(pooled.mean().item(), 4), "tokens": round(torch.stack(token_means).mean().item(), 4),
            "prompts": len(prompts)}


def _occurrences(ids: torch.Tensor, count: int) -> dict[tuple[int, int], int]:
    """(token id, k-th occurrence) -> position, for a prompt's tokens after the start marker."""
    seen: dict[int, int] = {}
    out = {}
    for pos in range(1, count):
        token = int(ids[pos])
        out[(token, seen.get(token, 0))] = pos
        seen[token] = seen.get(token, 0) + 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--pairs", type=int, default=96, help="held-out and random pairs each")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from diffgen.checkpoint import load_model
    from diffgen.emoji.scenes import concepts, heldout_pairs
    from diffgen.emoji.scorecard import PAIR_RELATIONS

    items = concepts()
    by_name = {c.name: c for c in items}
    held = sorted(heldout_pairs(items))
    rng = random.Random(0)
    pairs = held[: args.pairs] + [(a.name, b.name) for a, b in (rng.sample(items, 2) for _ in range(args.pairs))]
    prompts = []
    for a, b in pairs:
        for words in PAIR_RELATIONS.values():
            pa, pb = by_name[a].with_article(), by_name[b].with_article()
            prompts.append((f"{pa} {words} {pb}", f"{pb} {words} {pa}"))
    for path in args.checkpoints:
        model = load_model(path, "cpu", image_tower=False)
        print(json.dumps({"checkpoint": str(path), **order_similarity(model, prompts)}))


if __name__ == "__main__":
    main()
