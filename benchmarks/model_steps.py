"""How many sampler steps the shipped default model needs: every deterministic sampler at several
step counts, measured against a converged reference from the same starting noise.

The analytic check (benchmarks/sampler_orders.py) proves each sampler converges at its order on
Gaussian data; this script asks the practical question on the real network with guidance 3: at
what step count does the image stop changing? The reference is Heun with --ref-steps steps; its own
error is estimated from Heun at half as many steps (second order: the half-step run is about 4x
further from the truth than the reference). Errors are root-mean-square differences in 8-bit pixel
levels (0-255): overall, for the median image and for the worst image.

Run: .venv/bin/python benchmarks/model_steps.py [--out DIR] [-c CKPT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffgen.checkpoint import default_checkpoint, load_model
from diffgen.sampling.generate import ImageTask, generate
from diffgen.sampling.images import to_pil

PROMPTS = ("panda on a bike", "a cat", "a red car", "a tree")
SEEDS = (0, 1)
SAMPLERS = ("euler", "heun", "dpmpp-2m")
STEPS = (5, 8, 10, 12, 15, 20, 30, 50)


def forwards(sampler: str, steps: int) -> int:
    """Guided U-Net forwards per image: Heun evaluates twice per step except the last (to sigma 0)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def run(model, sampler: str, steps: int, guidance: float) -> torch.Tensor:
    """All prompt/seed images for one setting, as float pixel levels (N, 3, H, W)."""
    tasks = [ImageTask(index=i, prompt=p, seed=s, steps=steps, sampler=sampler, guidance=guidance, upscale=False)
             for i, (p, s) in enumerate((p, s) for p in PROMPTS for s in SEEDS)]
    return torch.stack([levels(img) for _, img, _ in generate(model, tasks, batch_size=len(tasks))])


def cached_run(path: Path, model, sampler: str, steps: int, guidance: float) -> torch.Tensor:
    """``run`` through a file cache, so the table can be re-read without sampling again."""
    if path.is_file():
        return load_file(path)["images"]
    images = run(model, sampler, steps, guidance)
    save_file({"images": images}, str(path))
    return images


def levels(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> the written PNG's 8-bit pixel levels, as floats (3, H, W)."""
    return torch.from_numpy(np.array(to_pil(image[None])[0])).permute(2, 0, 1).float()


def errors(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Pixel error against the reference: overall, the median and the worst image (one image near a
    mode boundary, e.g. a background between two of the data's colours, can dominate the overall)."""
    diff = images - reference
    per_image_rms = diff.pow(2).mean(dim=(1, 2, 3)).sqrt()
    return {"rms": diff.pow(2).mean().sqrt().item(), "median_image_rms": per_image_rms.median().item(),
            "worst_image_rms": per_image_rms.max().item(), "share_over_8": (diff.abs() > 8).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/model-steps"))
    parser.add_argument("-c", "--checkpoint", type=Path, default=None)
    parser.add_argument("--ref-steps", type=int, default=200)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.checkpoint or default_checkpoint())
    args.out.mkdir(parents=True, exist_ok=True)

    tag = f"g{args.guidance}"
    reference = cached_run(args.out / f"reference-heun{args.ref_steps}-{tag}.safetensors", model, "heun",
                           args.ref_steps, args.guidance)
    half = cached_run(args.out / f"heun-{args.ref_steps // 2}-{tag}.safetensors", model, "heun",
                      args.ref_steps // 2, args.guidance)
    ref_check = errors(half, reference)

    rows = []
    for sampler in SAMPLERS:
        for steps in STEPS:
            images = cached_run(args.out / f"{sampler}-{steps}-{tag}.safetensors", model, sampler, steps,
                                args.guidance)
            rows.append({"sampler": sampler, "steps": steps, "forwards": forwards(sampler, steps),
                         **errors(images, reference)})
    (args.out / "results.json").write_text(json.dumps({"reference": f"heun {args.ref_steps} steps",
                                                        "reference_vs_half": ref_check, "rows": rows},
                                                       indent=1))

    print(f"\nReference: Heun, {args.ref_steps} steps; Heun at {args.ref_steps // 2} steps differs from it "
          f"by {ref_check['rms']:.3f} levels RMS.\n")
    print("| sampler | steps | U-Net forwards | RMS error (levels) | median image | worst image "
          "| pixels off > 8 levels |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['forwards']} | {r['rms']:.2f} | {r['median_image_rms']:.2f} "
              f"| {r['worst_image_rms']:.2f} | {100 * r['share_over_8']:.1f}% |")

if __name__ == "__main__":
    main()
