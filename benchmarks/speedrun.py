"""The default model's speedrun: one training recipe for a fixed wall-clock budget, then the scorecard.

Every recipe is measured the same way, so recipes compare at equal compute:
1. the emoji data is built once per data recipe (fixed seed) under runs/speedrun/;
2. `diffgen train` runs the recipe (a config file and options) for --minutes of wall-clock time
   on --threads CPU threads (the run includes its data loading and caption encoding);
3. the scorecard (diffgen/emoji/scorecard.py) samples every section with the CLI's sampler at
   --eval-steps and judges it with sprite matching and the shape judge (trained once on the
   data's renders and cached), beside real scenes of the same prompts.
The row (images seen, images/s, every measure) is appended to runs/speedrun/results.jsonl;
`--table` prints all rows as the Markdown table kept in docs/BENCHMARKS.md.

Run: .venv/bin/python benchmarks/speedrun.py NAME --config configs/cpu64.toml --minutes 20 [--threads 2]
     .venv/bin/python benchmarks/speedrun.py shipped --eval-only checkpoints/default.safetensors
     .venv/bin/python benchmarks/speedrun.py --table
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "speedrun"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def ensure_data(recipe: str, count: int, seed: int) -> Path:
    """The emoji data folder of this data recipe, built on first use."""
    from diffgen.emoji.dataset import build_emoji_dataset

    folder = RUNS / f"data-{recipe}-{count}-s{seed}"
    meta = folder / "metadata.jsonl"
    # folders built before negative captions and object regions existed are rebuilt: the same
    # images, with both
    text = meta.read_text() if meta.is_file() else ""
    if '"negative_text"' not in text or '"regions"' not in text:
        started = time.perf_counter()
        build_emoji_dataset(folder, count, size=64, seed=seed, recipe=recipe)
        print(f"built {count} scenes ({recipe}) in {time.perf_counter() - started:.0f} s: {folder}")
    return folder


def ensure_judge(sprites, items, composer_size: int = 64):
    """The shape judge, trained once (about 3 CPU minutes) and cached."""
    from diffgen.emoji.judge import load_judge, save_judge, train_judge
    from diffgen.emoji.scenes import SceneComposer

    path = RUNS / "judge.safetensors"
    if path.is_file():
        return load_judge(path)
    judge, info = train_judge(SceneComposer(sprites, items, composer_size, set()), items)
    save_judge(judge, info, path)
    print(f"shape judge: top-1 {info['test_top1']:.3f}, top-5 {info['test_top5']:.3f} on "
          f"{info['test_images']} fresh renders ({info['seconds']} s)")
    return judge, info


def with_overrides(cfg, settings: list[str]):
    """``cfg`` with ``section.key=TOML value`` settings applied (validated like a config file)."""
    import tomllib

    from diffgen.config import config_from_dict, config_to_dict

    data = config_to_dict(cfg)
    for setting in settings:
        key, _, value = setting.partition("=")
        section, _, name = key.rpartition(".")
        target = data[section] if section else data
        target[name] = tomllib.loads(f"v = {value}")["v"]
    return config_from_dict(data)


def train(args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    from diffgen.config import load_config
    from diffgen.training import TrainOptions, run_training

    opts = TrainOptions(data=data, out=out, config=with_overrides(load_config(args.config), args.set),
                        device=args.device, progress=False, weights_dtype=args.weights_dtype,
                        time_limit=args.minutes * 60, init=args.init, text_encoder=args.text_encoder,
                        resume=(out / "state").is_dir() and args.resume, say=lambda m: print(m, flush=True))
    # a resumed run starts at its newest state: this stretch's rate counts only its own steps
    steps_before = max((int(p.stem.rsplit("-", 1)[1]) for p in (out / "state").glob("state-diffusion-*.json")),
                       default=0) if opts.resume else 0
    started = time.perf_counter()
    summary = run_training(opts)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["steps_before"] = steps_before
    return summary


def row_from(name: str, args: argparse.Namespace, summary: dict[str, Any] | None, scores: dict[str, Any]
             ) -> dict[str, Any]:
    images = summary["steps"] * summary["global_batch_size"] if summary else None
    return {"name": name, "cpu": cpu_name(), "device": args.device, "trained_on": args.trained_on,
            "threads": args.threads, "minutes": args.minutes if summary else None,
            "config": str(args.config) if summary else None, "overrides": args.set,
            "init": str(args.init) if args.init else None,
            "data": args.data_recipe, "images_seen": images,
            "images_per_s": round((summary["steps"] - summary.get("steps_before", 0)) * summary["global_batch_size"]
                                  / summary["wall_seconds"], 2) if summary else None,
            "command": args.command, "scores": scores}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One row per run: compute spent, then each measure for generated images (the real scenes
    score 1.00 on every sprite measure and 0.98 on the judge's singles)."""
    head = ("| recipe | CPU-min | images seen | img/s | singles sprite top-1 / top-5 | singles judge top-1 / top-5 | "
            "pair objects top-1, seen (sprite / judge) | held out (sprite / judge) | pairs both | "
            "showcase words both (sprite): panda-bike, dog-riding-bicycle, cat-bike, panda-car | FD judge (floor) |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    spent: dict[str, float] = {}  # a run continued with --resume: its CPU-minutes add up
    seen: dict[str, int] = {}
    for r in rows:
        s = r["scores"]
        rate_now = None
        if r["minutes"]:
            spent[r["name"]] = spent.get(r["name"], 0) + r["minutes"] * r["threads"]
            # images/s of this stretch of training, over its wall-clock budget
            rate_now = (r["images_seen"] - seen.get(r["name"], 0)) / (r["minutes"] * 60)
            seen[r["name"]] = r["images_seen"]
        g = {k: s[k]["generated"] for k in ("singles", "pairs_seen", "pairs_heldout", "showcase_words")}
        words = g["showcase_words"]["by_prompt"]
        cpu_min = f"{spent[r['name']]:.0f}" if r["minutes"] else "-"
        if r.get("trained_on"):  # minutes of a lent accelerator, not CPU-minutes
            cpu_min = f"{r['minutes']:.1f} min on {r['trained_on']}"
        images = f"{r['images_seen']:,}" if r["images_seen"] else "-"
        rate = f"{rate_now:.1f}" if rate_now else "-"
        both = (g["pairs_seen"]["sprite_all"] + g["pairs_heldout"]["sprite_all"]) / 2
        lines.append(
            f"| {r['name']} | {cpu_min} | {images} | {rate} | "
            f"{g['singles']['sprite_top1']:.3f} / {g['singles']['sprite_top5']:.3f} | "
            f"{g['singles']['judge_top1']:.3f} / {g['singles']['judge_top5']:.3f} | "
            f"{g['pairs_seen']['sprite_top1']:.3f} / {g['pairs_seen']['judge_top1']:.3f} | "
            f"{g['pairs_heldout']['sprite_top1']:.3f} / {g['pairs_heldout']['judge_top1']:.3f} | {both:.2f} | "
            + ", ".join(f"{v['sprite']:.2f}" for v in words.values()) + " | "
            f"{s['fd_judge']['generated']:.1f} ({s['fd_judge']['real_floor']:.1f}) |")
    return "\n".join(lines)


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="the recipe's name (its run folder and table row)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/cpu64.toml")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda (training and scoring)")
    parser.add_argument("--weights-dtype", default="float32", help="model.safetensors storage: float32 or float16")
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint (diffgen train --init)")
    parser.add_argument("--text-encoder", default=None, help="diffgen train --text-encoder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.precision='\"float32\"' --set train.lr=3e-4")
    parser.add_argument("--resume", action="store_true", help="continue the run folder's state for --minutes more")
    parser.add_argument("--data-recipe", default="standard", help="diffgen data emoji --recipe")
    parser.add_argument("--count", type=int, default=30000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--eval-only", type=Path, default=None, help="score this checkpoint without training")
    parser.add_argument("--score-run", action="store_true",
                        help="score the run folder NAME as it is (its summary.json gives steps and batch; "
                             "--minutes is taken as its budget): for a run finished by `diffgen train --resume`")
    parser.add_argument("--trained-on", default=None,
                        help="with --score-run: the accelerator the run trained on (e.g. 'H200'); "
                             "--minutes are then its minutes, not CPU-minutes")
    parser.add_argument("--eval-steps", type=int, default=10, help="sampler steps for the scorecard")
    parser.add_argument("--eval-seeds", type=int, default=1, help="images per single concept")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance for the scorecard")
    parser.add_argument("--pairs", type=int, default=24, help="seen and held-out pairs each (one image per pair)")
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="data, judge, runs and results.jsonl here (default: runs/speedrun)")
    args = parser.parse_args()
    args.command = "python benchmarks/speedrun.py " + " ".join(sys.argv[1:])
    global RUNS
    RUNS = args.runs_dir or RUNS
    results = RUNS / "results.jsonl"
    if args.table:
        rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
        print(markdown_table(rows))
        return
    if not args.name:
        parser.error("give the recipe a NAME (or --table)")
    torch.set_num_threads(args.threads)

    from diffgen.checkpoint import load_model
    from diffgen.emoji.scenes import concepts, find_font, render_sprites
    from diffgen.emoji.scorecard import Scorecard, score_model

    items = concepts()
    sprites = render_sprites(find_font(), items)
    judge, judge_info = ensure_judge(sprites, items)
    summary = None
    if args.eval_only is not None:
        checkpoint = args.eval_only
    elif args.score_run:
        out = RUNS / args.name
        summary = json.loads((out / "summary.json").read_text())
        summary["wall_seconds"] = args.minutes * 60  # the budget the run was given
        checkpoint = out / "model.safetensors"
    else:
        data = ensure_data(args.data_recipe, args.count, args.data_seed)
        out = RUNS / args.name
        summary = train(args, data, out)
        checkpoint = out / "model.safetensors"
        print(f"trained {summary['steps']} steps x {summary['global_batch_size']} in {summary['wall_seconds']} s")
    from diffgen.devices import pick_device

    model = load_model(checkpoint, pick_device(args.device))
    card = Scorecard(sprites, items, judge, model.config.image_size, pairs=args.pairs)
    card.sections["singles"] = [a for a in card.sections["singles"] for _ in range(args.eval_seeds)]
    started = time.perf_counter()
    scores = score_model(card, model, steps=args.eval_steps, guidance=args.guidance)
    scores["judge"] = judge_info
    scores["eval_seconds"] = round(time.perf_counter() - started, 1)
    row = row_from(args.name, args, summary, scores)
    RUNS.mkdir(parents=True, exist_ok=True)
    with results.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(markdown_table([row]))
    print(json.dumps({k: v for k, v in scores.items() if k != "judge"}, indent=1))


if __name__ == "__main__":
    main()
