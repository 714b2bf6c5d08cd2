"""Where a model falls short: its denoising loss at fixed noise levels, per kind of emoji scene,
with the scene's caption and with the empty prompt.

For each kind (the showcase "panda on a bike", single objects, two-object relations, counts) the
first --images scenes of that kind in the folder are noised at each sigma with fixed noise, and the
EDM-weighted loss lambda(sigma) * mean (D(x; sigma, c) - x0)^2 is measured once with the caption
and once unconditionally. The ratio (empty / caption) says how much the prompt helps the denoiser
at that noise level: about 1 means the model draws the same thing whatever the prompt says.

Run: .venv/bin/python benchmarks/sigma_loss.py DATA_FOLDER [-c CKPT] [--images 48]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from PIL import Image

from diffgen.checkpoint import default_checkpoint, load_model
from diffgen.emoji.scenes import NUMBERS
from diffgen.engine.denoiser import denoising_loss
from diffgen.engine.model import PromptCache
from diffgen.sampling.images import from_pil

SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
RELATION = re.compile(r" (on|riding|next to|beside|to the left of|to the right of|above|below) ")
COUNT = re.compile("^(" + "|".join(NUMBERS.values()) + ") ")


def scene_kind(caption: str) -> str:
    """The kind of emoji scene a caption describes (diffgen.emoji.scenes's caption grammar)."""
    if "panda" in caption and ("bike" in caption or "bicycle" in caption) and RELATION.search(caption):
        return "panda on a bike"
    if COUNT.match(caption):
        return "count"
    return "relation" if RELATION.search(caption) else "single object"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("-c", "--checkpoint", type=Path, default=None)
    parser.add_argument("--images", type=int, default=48, help="scenes per kind")
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.data / "metadata.jsonl").read_text().splitlines()]
    kinds: dict[str, list[dict]] = {"panda on a bike": [], "single object": [], "relation": [], "count": []}
    for row in rows:
        group = kinds[scene_kind(row["text"][0])]
        if len(group) < args.images:
            group.append(row)
    model = load_model(args.checkpoint or default_checkpoint())
    prompts = PromptCache(model.text_encoder)

    print(f"{args.images} scenes per kind from {args.data}; EDM-weighted loss with the caption / with the "
          "empty prompt, and their ratio\n")
    print("| scene kind | " + " | ".join(f"sigma {s:g}" for s in SIGMAS) + " |")
    print("|---|" + "---|" * len(SIGMAS))
    with torch.inference_mode():
        for kind, items in kinds.items():
            x0 = torch.stack([from_pil(Image.open(args.data / r["file_name"]).convert("RGB")) for r in items])
            cond = prompts([r["text"][0] for r in items])
            uncond = prompts([""] * len(items))
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
            cells = []
            for s in SIGMAS:
                sigma = torch.full((len(items),), s)
                x = (x0 + s * noise).contiguous(memory_format=torch.channels_last)
                # the training loss itself (training/stages.py): lambda(sigma) * mean (D - x0)^2
                with_caption = denoising_loss(model.denoiser, x, sigma, x0, cond).mean().item()
                empty = denoising_loss(model.denoiser, x, sigma, x0, uncond).mean().item()
                cells.append(f"{with_caption:.3f} / {empty:.3f} ({empty / with_caption:.2f}x)")
            print(f"| {kind} ({len(items)}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
