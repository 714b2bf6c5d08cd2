"""`diffgen eval`: image quality and prompt agreement, measured with the checkpoint's own CLIP.

Standard metric networks (Inception, DINOv2, pretrained CLIP) cannot be downloaded everywhere, so
features come from the image tower of the CLIP that diffgen trained with the model. Numbers are
comparable between samplers, step counts and guidance scales of one model, and against the
real-versus-real floor printed beside them, not across models or with published FID values.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffgen.data import load_training_set, scan_folder, split_fingerprint, split_holdout
from diffgen.engine.model import DiffusionModel
from diffgen.errors import InputError
from diffgen.sampling.generate import ImageTask, generate

FEATURE_NOTE = ("features: the checkpoint's own CLIP image tower (not Inception); compare within "
                "one model and against the real-vs-real floor")


@torch.inference_mode()
def image_features(model: DiffusionModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Unit-norm CLIP image features (N, E) of images (N, 3, S, S) in [-1, 1]."""
    clip = model.text_encoder.clip
    device = model.device
    parts = [F.normalize(clip.encode_image(images[i:i + batch_size].to(device)).float(), dim=-1).cpu()
             for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


@torch.inference_mode()
def text_features(model: DiffusionModel, prompts: list[str]) -> torch.Tensor:
    """Unit-norm CLIP text features (N, E)."""
    return F.normalize(model.text_encoder.encode(prompts).pooled.float(), dim=-1).cpu()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (Heusel et al. 2017):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


def kernel_inception_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Bińkowski et al. 2018)."""
    a, b = a.double(), b.double()
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    m, n = len(a), len(b)
    return float((k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
                 + (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1)) - 2 * k_ab.mean())


def prompt_agreement(img: torch.Tensor, prompts: list[str], txt_by_prompt: dict[str, torch.Tensor]) -> dict[str, float]:
    """CLIP score (100 x mean cosine of each image with its prompt) and image-to-prompt retrieval
    top-1 among the distinct prompts, with its chance level."""
    distinct = sorted(set(prompts))
    txt = torch.stack([txt_by_prompt[p] for p in distinct])
    own = torch.tensor([distinct.index(p) for p in prompts])
    sims = img @ txt.T
    score = sims[torch.arange(len(prompts)), own].mean().item() * 100
    top1 = (sims.argmax(dim=1) == own).float().mean().item()
    return {"clip_score": score, "retrieval_top1": top1, "retrieval_chance": 1 / len(distinct)}


@dataclass
class EvalSet:
    """Real images and prompts, split as training split them."""

    real_heldout: torch.Tensor  # (N, 3, S, S) in [-1, 1]
    real_train: torch.Tensor  # the same count of training images, for the real-vs-real floor
    prompts: list[str]  # one per held-out image: its first caption


def load_eval_set(model: DiffusionModel, data: Path, max_images: int) -> EvalSet:
    """Held-out images of ``data`` (the split training used, by the checkpoint's seed)."""
    report = scan_folder(data, check_tokens=False)
    if not report.items:
        raise InputError(f"no usable image-caption pairs in {data}")
    full = load_training_set(report.items, model.config.image_size)
    train_idx, held_idx = split_holdout(len(full), model.config.train.seed)
    trained = model.metadata.get("training", {}).get("held_out_split") if isinstance(model.metadata, dict) else None
    if trained is not None and trained != split_fingerprint(data, full.paths, held_idx):
        raise InputError(f"{data} is not the folder this model was trained on (its held-out split differs: "
                         f"{trained['images']} images then, {len(full)} now, or other files): the scores would "
                         "include training images")
    if len(held_idx) < 10:
        raise InputError(f"{data} has too few images for a held-out set ({len(full)}; need 100+)")
    n = min(max_images, len(held_idx), len(train_idx))
    held, train = held_idx[:n], train_idx[:n]
    to_float = lambda idx: full.images[idx].float() / 127.5 - 1  # noqa: E731
    return EvalSet(to_float(held), to_float(train), [full.captions[i][0] for i in held])


def evaluate_settings(model: DiffusionModel, evalset: EvalSet, real_feats: torch.Tensor,
                      txt_by_prompt: dict[str, torch.Tensor], sampler: str, steps: int,
                      guidance: float, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Generate one image per held-out prompt (fixed seeds) and score it."""
    import time

    tasks = [ImageTask(index=k, prompt=p, seed=seed + k, steps=steps, sampler=sampler, guidance=guidance, upscale=False)
             for k, p in enumerate(evalset.prompts)]
    start = time.perf_counter()
    images = torch.stack([img for _, img, _ in generate(model, tasks, batch_size)])
    seconds = time.perf_counter() - start
    feats = image_features(model, images)
    return {"sampler": sampler, "steps": steps, "guidance": guidance, "images": len(images),
            "fd": frechet_distance(feats, real_feats), "kid": kernel_inception_distance(feats, real_feats),
            **prompt_agreement(feats, evalset.prompts, txt_by_prompt), "seconds": round(seconds, 2)}


def run_eval(model: DiffusionModel, data: Path, samplers: list[str], steps: list[int],
             guidances: list[float], max_images: int = 500, batch_size: int = 64,
             on_result: Any = None) -> dict[str, Any]:
    """The floor, then every (sampler, steps, guidance) combination; returns all rows."""
    evalset = load_eval_set(model, data, max_images)
    real_feats = image_features(model, evalset.real_heldout)
    floor_feats = image_features(model, evalset.real_train)
    txt_by_prompt = dict(zip(sorted(set(evalset.prompts)), text_features(model, sorted(set(evalset.prompts)))))
    floor = {"images": len(real_feats), "fd": frechet_distance(floor_feats, real_feats),
             "kid": kernel_inception_distance(floor_feats, real_feats),
             **prompt_agreement(real_feats, evalset.prompts, txt_by_prompt)}
    rows = []
    for sampler, num_steps, guidance in itertools.product(samplers, steps, guidances):
        row = evaluate_settings(model, evalset, real_feats, txt_by_prompt, sampler, num_steps, guidance,
                                batch_size)
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return {"note": FEATURE_NOTE, "floor": floor, "rows": rows, "feature_dim": int(real_feats.shape[1])}


def prompt_set_agreement(model: DiffusionModel, prompts: list[str], images_per_prompt: int, sampler: str,
                         steps: int, guidance: float, batch_size: int) -> dict[str, Any]:
    """CLIP score and retrieval for images of an arbitrary prompt set (e.g. held-out object pairs),
    retrieval ranking each image against the set's distinct prompts."""
    expanded = [p for p in prompts for _ in range(images_per_prompt)]
    tasks = [ImageTask(index=k, prompt=p, seed=k, steps=steps, sampler=sampler, guidance=guidance, upscale=False)
             for k, p in enumerate(expanded)]
    images = torch.stack([img for _, img, _ in generate(model, tasks, batch_size)])
    distinct = sorted(set(prompts))
    txt = dict(zip(distinct, text_features(model, distinct)))
    return {"prompts": len(distinct), "images": len(images), "sampler": sampler, "steps": steps,
            "guidance": guidance, **prompt_agreement(image_features(model, images), expanded, txt)}


def markdown_table(result: dict[str, Any]) -> str:
    """The eval result as a Markdown table, the real-vs-real floor first."""
    floor = result["floor"]
    lines = [f"_{result['note']}_", "",
             "| sampler | steps | guidance | FD | KID x1e3 | CLIP score | retrieval top-1 | seconds |",
             "|---|---|---|---|---|---|---|---|",
             f"| real vs real (floor) | - | - | {floor['fd']:.4f} | {floor['kid'] * 1e3:.3f} | "
             f"{floor['clip_score']:.2f} | {floor['retrieval_top1']:.3f} | - |"]
    for r in result["rows"]:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['guidance']:g} | {r['fd']:.4f} | "
                     f"{r['kid'] * 1e3:.3f} | {r['clip_score']:.2f} | {r['retrieval_top1']:.3f} | {r['seconds']} |")
    lines.append(f"\n{floor['images']} images per set; retrieval chance level "
                 f"{result['rows'][0]['retrieval_chance'] if result['rows'] else float('nan'):.3f}.")
    if result.get("prompt_sets"):
        lines += ["", "| prompt set | prompts | images | CLIP score | retrieval top-1 | chance |",
                  "|---|---|---|---|---|---|"]
        for name, r in result["prompt_sets"].items():
            lines.append(f"| {name} | {r['prompts']} | {r['images']} | {r['clip_score']:.2f} | "
                         f"{r['retrieval_top1']:.3f} | {r['retrieval_chance']:.3f} |")
    return "\n".join(lines)


def sweep_series(result: dict[str, Any]) -> tuple[dict[str, tuple[list[float], list[float]]], str]:
    """FD lines for the chart and their x axis: against steps, one line per (sampler, guidance);
    or, when every row has the same steps and guidance varies, against guidance, one line per
    sampler. The real-vs-real floor is a flat line wherever there is more than one x value."""
    rows = result["rows"]
    by_guidance = len({r["steps"] for r in rows}) == 1 and len({r["guidance"] for r in rows}) > 1
    axis = "guidance" if by_guidance else "steps"
    points: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        name = f"{r['sampler']} {r['steps']} steps" if by_guidance else f"{r['sampler']} g={r['guidance']:g}"
        points.setdefault(name, []).append((r[axis], r["fd"]))
    series = {name: ([x for x, _ in sorted(pts)], [y for _, y in sorted(pts)]) for name, pts in points.items()}
    xs = sorted({r[axis] for r in rows})
    if len(xs) > 1:
        series["real vs real"] = (xs, [result["floor"]["fd"]] * len(xs))
    return series, axis


def sweep_chart(result: dict[str, Any]) -> Any:
    """The sweep as a chart (see ``sweep_series``)."""
    from diffgen.plots import line_chart

    series, axis = sweep_series(result)
    # "Frechet" without the accent: Pillow's built-in font has no glyph for it
    return line_chart(series, f"Frechet distance (CLIP features) vs {axis}", x_label=axis,
                      log_x=axis == "steps")


def write_eval(result: dict[str, Any], out: Path) -> None:
    """eval.json (everything), eval.md (the table) and eval.png (the sweep chart), each atomically."""
    import json

    from diffgen.fileio import atomic_write
    from diffgen.sampling.images import save_png

    atomic_write(out / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    atomic_write(out / "eval.md", lambda tmp: Path(tmp).write_text(markdown_table(result) + "\n"))
    save_png(sweep_chart(result), out / "eval.png")
