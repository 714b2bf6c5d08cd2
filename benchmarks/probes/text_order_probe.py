"""Do a model's text tokens say which object goes where? A probe shaped like one cross-attention head.

The U-Net reads the prompt through cross-attention: each pixel's query weighs the token states.
This trains the smallest such reader on the frozen tokens of a checkpoint's text encoder: two
learned queries ("first place": left or top, "second place": right or bottom), one key and one
value projection, and a linear layer over the 131 concepts, to name the object in each place of
"A to the left of B", "B to the right of A", "A above B" and "B below A". Trained on captions of
seen pairs, tested on held-out pairs (never in the data, in either order). "right" is the share
of test captions with both places named correctly, "swapped" with the two objects exchanged; a
reader that sees the objects but not their order scores the two alike.

Run: .venv/bin/python benchmarks/probes/text_order_probe.py checkpoints/default.safetensors
"""

from __future__ import annotations

import argparse
import json
import random

import torch
import torch.nn.functional as F
from torch import nn

FORMS = ("{a} to the left of {b}", "{b} to the right of {a}", "{a} above {b}", "{b} below {a}")


def captions(items, held: set[tuple[str, str]], count: int, heldout: bool, rng: random.Random):
    """``count`` relation captions and the indices of the objects in the first and second place."""
    index = {c.name: i for i, c in enumerate(items)}
    pool = sorted(held)
    texts, first, second = [], [], []
    while len(texts) < count:
        if heldout:
            a, b = (items[index[n]] for n in rng.choice(pool))
        else:
            a, b = rng.sample(items, 2)
            if (a.name, b.name) in held:
                continue
        texts.append(rng.choice(FORMS).format(a=a.phrase(rng), b=b.phrase(rng)))
        first.append(index[a.name])
        second.append(index[b.name])
    return texts, torch.tensor(first), torch.tensor(second)


class Reader(nn.Module):
    """Two learned queries attend over the tokens (one head); each result names a concept."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(2, dim) * 0.1)
        self.key, self.value, self.head = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("qd,bld->bql", self.queries, self.key(tokens)) / tokens.shape[-1] ** 0.5
        return self.head(torch.einsum("bql,bld->bqd", scores.softmax(-1), self.value(tokens)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--train", type=int, default=20000, help="training captions")
    parser.add_argument("--test", type=int, default=2000, help="test captions, seen and held out each")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from diffgen.checkpoint import load_model
    from diffgen.emoji.scenes import concepts, heldout_pairs

    model = load_model(args.checkpoint, torch.device("cpu"), image_tower=False)
    items = concepts()
    held = heldout_pairs(items)
    held |= {(b, a) for a, b in held}
    rng = random.Random(0)
    sets = {name: captions(items, held, n, name == "held_out", rng)
            for name, n in (("train", args.train), ("seen", args.test), ("held_out", args.test))}

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        return torch.cat([model.encode_prompts(texts[i:i + 256])[0].tokens for i in range(0, len(texts), 256)])

    tokens = {name: encode(texts) for name, (texts, _, _) in sets.items()}
    reader = Reader(tokens["train"].shape[-1], len(items))
    optimizer = torch.optim.Adam(reader.parameters(), lr=2e-3)
    _, first, second = sets["train"]
    for _ in range(args.steps):
        batch = torch.randint(0, len(first), (256,))
        logits = reader(tokens["train"][batch])
        loss = F.cross_entropy(logits[:, 0], first[batch]) + F.cross_entropy(logits[:, 1], second[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = {"checkpoint": args.checkpoint}
    with torch.no_grad():
        for name in ("seen", "held_out"):
            _, first, second = sets[name]
            named = reader(tokens[name]).argmax(-1)
            report[name] = {
                "right": round(((named[:, 0] == first) & (named[:, 1] == second)).float().mean().item(), 3),
                "swapped": round(((named[:, 0] == second) & (named[:, 1] == first)).float().mean().item(), 3)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
