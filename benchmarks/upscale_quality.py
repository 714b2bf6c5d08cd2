"""The upscaling stage measured: fidelity on held-out real scenes, the judges on the whole pipeline
from text, and the cost.

    python benchmarks/upscale_quality.py fidelity -c MODEL --low data/eval64 --high data/eval128
    python benchmarks/upscale_quality.py pipeline -c MODEL --judge runs/speedrun/judge.safetensors
    python benchmarks/upscale_quality.py cost -c MODEL

fidelity: each real 64 px scene upscaled and compared with the same scene rendered at 128 px (a
folder `diffgen data emoji --size 128` wrote, seeded apart from the training data). The 64 px scene
is the 128 px render's 2x2 means (`--low reduce`, the usual super-resolution protocol) or the
same scene rendered at 64 px (`--low FOLDER`, the same command with --size 64 and the same seed;
its sprites sit on the 64 px pixel grid, up to half a pixel from where the 128 px render puts
them, which no method can know). PSNR
and SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, on each RGB channel) for the upscaler
and for bicubic and Lanczos resizing, with standard errors over the images; how far the upscale's
2x2 means stray from its input (mean absolute difference in levels); a picture of 16 side by side.
pipeline: the scorecard's singles (131 concepts x 2 seeds) and pairs (seen and held out) sampled at
the default settings; the 64 px images judged as they are and their upscales judged after a
Lanczos reduction back to 64 px, seed for seed; the mean absolute difference between the two.
cost: seconds per image at 64 px and at 128 px (base + upscale), batch 1 and 8, in one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent


def load_folder(folder: Path, count: int, offset: int = 0) -> list[Image.Image]:
    lines = (folder / "metadata.jsonl").read_text().splitlines()[offset:offset + count]
    rows = [json.loads(line) for line in lines]
    return [Image.open(folder / row["file_name"]).convert("RGB") for row in rows]


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32)).permute(2, 0, 1) for i in images]) / 127.5 - 1


def levels(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> 8-bit levels as float (what a PNG holds)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image (B,), of 8-bit levels."""
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image (B,), of 8-bit levels: mean SSIM over the valid windows of each channel."""
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-coords**2 / (2 * 1.5**2))
    g = (g / g.sum()).float()
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=3)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.mean(dim=(1, 2, 3))


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


def pil_resize(images: list[Image.Image], size: int, method: Image.Resampling) -> torch.Tensor:
    return to_tensor([i.resize((size, size), method) for i in images])


def upscale_levels(model, low: torch.Tensor, seeds: list[int], steps: int | None, aug: float | None,
                   batch: int = 8) -> torch.Tensor:
    from diffgen.engine.upscaler import upscale, upscale_generator

    out = []
    with torch.inference_mode():
        for i in range(0, len(low), batch):
            out.append(upscale(model.upscaler, low[i:i + batch], [upscale_generator(s) for s in seeds[i:i + batch]],
                               steps, aug))
    return torch.cat(out)


def fidelity(args: argparse.Namespace) -> dict:
    from diffgen.checkpoint import load_model
    from diffgen.engine.upscaler import reduce
    from diffgen.sampling.images import labelled_grid, to_pil

    model = load_model(args.checkpoint, "cpu", image_tower=False)
    highs = load_folder(args.high, args.count, args.offset)
    size = highs[0].width
    if args.low.name == "reduce":  # the standard protocol: each 2x2 block's mean, as a PNG holds it
        lows = to_pil(levels(reduce(to_tensor(highs))) / 127.5 - 1)
    else:  # the same scenes rendered at the base size (sprites placed to that size's pixel grid)
        lows = load_folder(args.low, args.count, args.offset)
    truth, low = levels(to_tensor(highs)), to_tensor(lows)
    results: dict = {"images": len(lows), "offset": args.offset, "low": str(args.low), "high": str(args.high)}
    made = {"bicubic": pil_resize(lows, size, Image.Resampling.BICUBIC),
            "lanczos": pil_resize(lows, size, Image.Resampling.LANCZOS)}
    trained = model.upscaler.cfg
    for sigma_max in args.sigma_max or [trained.sigma_max]:
        # the sampler's starting level is a sampling choice (training draws its own levels)
        model.upscaler.cfg = dataclasses.replace(trained, sigma_max=sigma_max)
        for steps in args.steps or [trained.steps]:
            for aug in args.aug or [trained.aug_sigma]:
                name = f"upscaler {steps} steps aug {aug}" + (f" sigma_max {sigma_max}" if args.sigma_max else "")
                start = time.perf_counter()
                made[name] = upscale_levels(model, low, list(range(len(lows))), steps, aug)
                print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    model.upscaler.cfg = trained
    for name, images in made.items():
        got = levels(images)
        p, s = psnr(got, truth), ssim(got, truth)
        back = (levels(reduce(images)) - levels(low)).abs().mean().item()
        results[name] = {"psnr": mean_se(p), "ssim": mean_se(s), "reduced_vs_input_levels": back}
        print(f"{name}: PSNR {p.mean():.2f} +- {p.std() / math.sqrt(len(p)):.2f}, SSIM {s.mean():.4f} "
              f"+- {s.std() / math.sqrt(len(s)):.4f}, 2x2 means vs input {back:.2f} levels", flush=True)
    if args.picture:
        default = f"upscaler {model.upscaler.cfg.steps} steps aug {model.upscaler.cfg.aug_sigma}"
        chosen = default if default in made else next(k for k in made if k.startswith("upscaler"))
        cells, labels = [], []
        for k in range(16):
            cells += [lows[k].resize((size, size), Image.Resampling.NEAREST), to_pil(made["bicubic"][k:k + 1])[0],
                      to_pil(made["lanczos"][k:k + 1])[0], to_pil(made[chosen][k:k + 1])[0], highs[k]]
            labels += ["64 px input", "bicubic", "Lanczos", "diffgen upscaler", "real 128 px"]
        labelled_grid(cells, labels, columns=10, cell=size).save(args.picture)
        print(f"picture: {args.picture}")
    return results


def rate_se(hits: int, total: int) -> tuple[float, float]:
    p = hits / total
    return p, math.sqrt(p * (1 - p) / total)


def pipeline(args: argparse.Namespace) -> dict:
    """The judges on 64 px images and on their upscales reduced to 64 px, seed for seed."""
    from diffgen.checkpoint import load_model
    from diffgen.emoji.judge import load_judge
    from diffgen.emoji.scenes import concepts, find_font, render_sprites
    from diffgen.emoji.scorecard import Scorecard
    from diffgen.sampling.generate import generate
    from diffgen.sampling.images import to_pil
    from diffgen.sampling.tasks import ImageTask

    if not args.judge.is_file():
        raise SystemExit(f"no shape judge at {args.judge}: `make speedrun` trains and caches it (about 3 minutes)")
    items = concepts()
    judge, _ = load_judge(args.judge)
    model = load_model(args.checkpoint, "cpu", image_tower=False)
    size = model.config.image_size
    card = Scorecard(render_sprites(find_font(), items), items, judge, size, pairs=args.pairs)
    results: dict = {"checkpoint": str(args.checkpoint), "pairs": args.pairs}
    differences = []
    for section, repeats in (("singles", 2), ("pairs_seen", 1), ("pairs_heldout", 1)):
        asks = card.sections[section]
        counts: dict = {}
        for repeat in range(repeats):
            seeds = [repeat * len(asks) + k for k in range(len(asks))]
            tasks = [ImageTask(index=k, prompt=ask.prompt, seed=seed, upscale=False)
                     for k, (ask, seed) in enumerate(zip(asks, seeds))]
            start = time.perf_counter()
            cached = args.base_cache / f"{section}-{repeat}.safetensors" if args.base_cache else None
            if cached is not None and cached.is_file():
                base = load_file(str(cached))["base"]
            else:
                with torch.inference_mode():
                    base = torch.stack([image for _, image, _ in generate(model, tasks, 8)])
                base = levels(base) / 127.5 - 1  # the 64 px PNGs' pixels, which the pipeline upscales
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    save_file({"base": base.contiguous()}, str(cached))
            if args.base_only:
                print(f"{section} seeds from {seeds[0]}: {len(asks)} base images in "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
                continue
            high = upscale_levels(model, base, seeds, None, None)
            reduced = [image.resize((size, size), Image.Resampling.LANCZOS) for image in to_pil(high)]
            differences.append((levels(to_tensor(reduced)) - levels(base)).abs().mean().item())
            print(f"{section} seeds from {seeds[0]}: {len(asks)} images in {time.perf_counter() - start:.0f} s",
                  flush=True)
            for label, images in (("64px", to_pil(base)), ("128px", reduced)):
                scores = card.judge_section(section, images)
                per_image = len(asks[0].objects)
                for key in ("sprite_top1", "judge_top1", "sprite_all", "judge_all"):
                    if key in scores:
                        total = len(asks) * (per_image if key.endswith("top1") else 1)
                        hits, seen = counts.get((label, key), (0, 0))
                        counts[(label, key)] = (hits + round(scores[key] * total), seen + total)
        results[section] = {f"{label} {key}": rate_se(*value) for (label, key), value in counts.items()}
        print(section, json.dumps({k: [round(v, 3) for v in pair] for k, pair in results[section].items()}),
              flush=True)
    if args.base_only:
        return results
    results["reduced_128_vs_64_levels"] = float(np.mean(differences))
    print(f"Lanczos-reduced 128 px vs 64 px: mean absolute difference {results['reduced_128_vs_64_levels']:.2f} "
          "levels", flush=True)
    return results


def cost(args: argparse.Namespace) -> dict:
    """Seconds per image at 64 px and 128 px (base + upscale), batch 1 and 8, in this one process."""
    from diffgen.checkpoint import load_model
    from diffgen.sampling.generate import generate
    from diffgen.sampling.tasks import ImageTask

    model = load_model(args.checkpoint, "cpu", image_tower=False)
    results: dict = {"checkpoint": str(args.checkpoint), "checkpoint_mb": args.checkpoint.stat().st_size / 1e6,
                     "threads": torch.get_num_threads()}
    for batch in (1, 8):
        for upscale in (False, True):
            tasks = [ImageTask(index=k, prompt="a panda on a bike", seed=k, upscale=upscale) for k in range(batch)]
            with torch.inference_mode():
                list(generate(model, tasks, batch))  # warm-up
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    list(generate(model, tasks, batch))
                    times.append((time.perf_counter() - start) / batch)
            key = f"batch {batch} {'128' if upscale else '64'} px"
            results[key] = {"seconds_per_image": min(times), "all": times}
            print(f"{key}: {min(times):.3f} s per image (best of {args.repeats})", flush=True)
    for batch in (1, 8):
        results[f"batch {batch} ratio"] = (results[f"batch {batch} 128 px"]["seconds_per_image"]
                                           / results[f"batch {batch} 64 px"]["seconds_per_image"])
        print(f"batch {batch}: 128 px costs {results[f'batch {batch} ratio']:.2f}x a 64 px image")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("fidelity", "pipeline", "cost"))
    parser.add_argument("-c", "--checkpoint", type=Path, default=ROOT / "checkpoints" / "default.safetensors")
    parser.add_argument("--low", type=Path, default=Path("reduce"),
                        help="'reduce' (the 128 px scenes' 2x2 means) or a folder of the same scenes at 64 px")
    parser.add_argument("--high", type=Path, default=ROOT / "data" / "eval128")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--offset", type=int, default=100,
                        help="fidelity: the first scene used (scenes 0-99 are where the sampling settings were chosen)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="fidelity: default the model's")
    parser.add_argument("--aug", type=float, nargs="+", default=None, help="fidelity: default the model's")
    parser.add_argument("--sigma-max", type=float, nargs="+", default=None,
                        help="fidelity: sampler starting levels to compare (default: the model's)")
    parser.add_argument("--picture", type=Path, default=None)
    parser.add_argument("--judge", type=Path, default=ROOT / "runs" / "speedrun" / "judge.safetensors")
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--base-cache", type=Path, default=None,
                        help="pipeline: keep the 64 px images here and reuse them (the U-Net and text tower "
                             "are the upscaling stage's --init model's, so they do not change with the upscaler)")
    parser.add_argument("--base-only", action="store_true", help="pipeline: only make and cache the 64 px images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="cost: timed repeats (the best is kept)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"fidelity": fidelity, "pipeline": pipeline, "cost": cost}[args.mode](args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
