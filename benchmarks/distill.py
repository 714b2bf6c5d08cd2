"""The distilled few-step sampler measured (issue 33): the teacher at 20 steps against the student at
1, 2, 4 and 8 steps, on cost and on the project's judges, and a picture of the same seeds.

    python benchmarks/distill.py cost --student RUN/student.safetensors [-c MODEL] [--threads 2]
    python benchmarks/distill.py judge --student RUN/student.safetensors [--rows teacher20,student4]
        [--concepts 131] [--seeds 2] [--pairs 96] [--out runs/distill-bench]
    python benchmarks/distill.py picture --student RUN/student.safetensors [--picture steps.png]
    python benchmarks/distill.py table [--out runs/distill-bench]

cost: seconds per image (best of --repeats, after a warm-up) at batch 1 and batch 8, at the base
size and with the model's upscaler (today's default output), and forwards per image: U-Net rows
(the teacher's guidance runs two per step) and upscaler rows, counted by hooks on the networks.
judge: the scorecard of diffgen/emoji/scorecard.py at the CLI's settings (guidance 3; the teacher
dpmpp-2m on the Karras schedule): singles over the concepts x --seeds seeds, seen and held-out pairs
(--pairs each), the riding prompts (4 seeds each), FD in the shape judge's features beside its
floor (two real sets), for each row of --rows: ``teacherN`` (the teacher at N steps), ``studentK``
(the student at K steps), ``startK`` (the undistilled student: the teacher's U-Net, guidance
embedding at zero, consistency sampling at K steps: what distillation starts from). Each row is
written to OUT/row-NAME.json and skipped when it exists, so the rows can be run in pieces;
``table`` prints them as Markdown. The shape judge is runs/speedrun/judge.safetensors where `make
speedrun` left one, else trained once (about 3 CPU minutes) into OUT.
picture: prompts (rows) x the teacher at 20 and the student at 1, 2, 4, 8 steps (columns), one
seed per prompt, the same seed in every column.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROWS = "teacher20,student1,student2,student4,student8"
PICTURE_PROMPTS = ("a panda on a bike", "a dog riding a bicycle", "a red apple", "a cat", "a dog to the left of a cat",
                   "an ice cream above a house")


def load(args: argparse.Namespace) -> Any:
    """The teacher with the student attached."""
    from diffgen.checkpoint import load_model
    from diffgen.students import attach_student

    model = load_model(args.checkpoint, "cpu", image_tower=False)
    if args.student is not None:
        attach_student(model, args.student)
    return model


def parse_row(name: str) -> tuple[str, int]:
    """``teacher20`` -> ("teacher", 20)."""
    for kind in ("teacher", "student", "start"):
        if name.startswith(kind) and name[len(kind):].isdigit():
            return kind, int(name[len(kind):])
    raise SystemExit(f"unknown row {name!r}: teacherN, studentK or startK")


def tasks_for(kind: str, steps: int, prompts: list[str], seeds: list[int], guidance: float, upscale: bool) -> list:
    from diffgen.sampling.tasks import ImageTask

    return [ImageTask(index=k, prompt=p, seed=s, steps=steps, guidance=guidance, upscale=upscale,
                      fast=kind != "teacher") for k, (p, s) in enumerate(zip(prompts, seeds))]


def with_row(model: Any, kind: str) -> Any:
    """``model`` set up for a row: a start row samples the teacher's own U-Net as a student."""
    from diffgen.engine.consistency import AttachedStudent, Student

    if kind == "start":
        if not hasattr(model, "trained_student"):
            model.trained_student = model.student
        model.student = AttachedStudent(Student.of_teacher(model.denoiser).eval(), 7.0, "start", "")
    elif kind == "student":
        model.student = getattr(model, "trained_student", model.student)
        if model.student is None:
            raise SystemExit("student rows need --student FILE")
    return model


def images_of(model: Any, kind: str, steps: int, prompts: list[str], seeds: list[int], guidance: float,
              batch: int = 16, upscale: bool = False) -> list:
    from diffgen.sampling.generate import generate
    from diffgen.sampling.images import to_pil

    tasks = tasks_for(kind, steps, prompts, seeds, guidance, upscale)
    with torch.inference_mode():
        return [to_pil(image[None])[0] for _, image, _ in generate(with_row(model, kind), tasks, batch)]


class Counter:
    """Rows through a network, counted by a forward pre-hook (a batch of B counts B)."""

    def __init__(self, module: torch.nn.Module):
        self.rows = 0
        self.handle = module.register_forward_pre_hook(self.hook)

    def hook(self, module: torch.nn.Module, inputs: tuple) -> None:
        self.rows += inputs[0].shape[0]


def cmd_cost(args: argparse.Namespace) -> dict:
    from diffgen.sampling.generate import generate

    model = load(args)
    nets = {"unet": model.denoiser.net}
    if model.student is not None:
        nets["student"] = model.student.student.net
    if model.upscaler is not None:
        nets["upscaler"] = model.upscaler
    results: dict = {"checkpoint": str(args.checkpoint), "student": str(args.student),
                     "threads": torch.get_num_threads()}
    for row in args.rows.split(","):
        kind, steps = parse_row(row)
        for upscale in (False, True) if model.upscaler is not None else (False,):
            for batch in (1, 8):
                tasks = tasks_for(kind, steps, ["a panda on a bike"] * batch, list(range(batch)), args.guidance,
                                  upscale)
                with_row(model, kind)
                with torch.inference_mode():
                    list(generate(model, tasks, batch))  # warm-up
                    times = []
                    counters = {name: Counter(net) for name, net in nets.items()}
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        list(generate(model, tasks, batch))
                        times.append((time.perf_counter() - start) / batch)
                    for counter in counters.values():
                        counter.handle.remove()
                forwards = {name: c.rows / (batch * args.repeats) for name, c in counters.items()}
                key = f"{row} batch {batch} {'upscaled' if upscale else 'base'}"
                results[key] = {"seconds_per_image": min(times), "all": times, "forwards_per_image": forwards}
                print(f"{key}: {min(times):.3f} s per image, forwards per image "
                      + ", ".join(f"{k} {v:g}" for k, v in forwards.items() if v), flush=True)
    return results


def judge_and_card(args: argparse.Namespace, size: int) -> tuple[Any, dict]:
    from diffgen.emoji.judge import load_judge, save_judge, train_judge
    from diffgen.emoji.scenes import SceneComposer, concepts, find_font, render_sprites
    from diffgen.emoji.scorecard import Scorecard

    items = concepts()
    sprites = render_sprites(find_font(), items)
    cached = ROOT / "runs" / "speedrun" / "judge.safetensors"
    path = args.judge or (cached if cached.is_file() else args.out / "judge.safetensors")
    if path.is_file():
        judge, info = load_judge(path)
    else:
        judge, info = train_judge(SceneComposer(sprites, items, size, set()), items)
        args.out.mkdir(parents=True, exist_ok=True)
        save_judge(judge, info, path)
    card = Scorecard(sprites, items, judge, size, pairs=args.pairs)
    card.sections["singles"] = [a for a in card.sections["singles"][:args.concepts] for _ in range(args.seeds)]
    return card, {"path": str(path), **info}


def cmd_judge(args: argparse.Namespace) -> dict:
    model = load(args)
    card, judge_info = judge_and_card(args, model.config.image_size)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for row in args.rows.split(","):
        kind, steps = parse_row(row)
        path = args.out / f"row-{row}.json"
        if path.is_file() and not args.redo:
            results[row] = json.loads(path.read_text())
            print(f"{row}: kept {path}", flush=True)
            continue
        started = time.perf_counter()
        scores: dict[str, Any] = {"row": row, "steps": steps, "guidance": args.guidance, "judge": judge_info,
                                  "concepts": args.concepts, "seeds": args.seeds, "pairs": args.pairs,
                                  "student": str(args.student)}
        singles: list = []
        for section, asks in card.sections.items():
            if not asks:
                continue
            images = images_of(model, kind, steps, [a.prompt for a in asks], list(range(len(asks))), args.guidance)
            singles = images if section == "singles" else singles
            scores[section] = {"generated": card.judge_section(section, images),
                               "real": card.judge_section(section, card.real_images(section))}
        scores["fd_judge"] = card.fd(singles)
        scores["seconds"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(scores, indent=1))
        results[row] = scores
        print(f"{row}: {summary_line(scores)} ({scores['seconds']} s)", flush=True)
    return results


def summary_line(s: dict) -> str:
    g = {k: s[k]["generated"] for k in ("singles", "pairs_seen", "pairs_heldout", "showcase_words") if k in s}
    return (f"singles sprite {g['singles']['sprite_top1']:.3f} judge {g['singles']['judge_top1']:.3f}; "
            f"pairs both seen {g['pairs_seen']['sprite_all']:.3f} / {g['pairs_seen']['judge_all']:.3f}, held out "
            f"{g['pairs_heldout']['sprite_all']:.3f} / {g['pairs_heldout']['judge_all']:.3f}; riding "
            + ", ".join(f"{v['sprite']:.2f}" for v in g["showcase_words"]["by_prompt"].values())
            + f"; FD {s['fd_judge']['generated']:.1f} (floor {s['fd_judge']['real_floor']:.1f})")


def cmd_table(args: argparse.Namespace) -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(args.out.glob("row-*.json"))]
    head = ("| row | singles sprite top-1 / top-5 | singles judge top-1 / top-5 | pair objects top-1 seen "
            "(sprite / judge) | held out | pairs both seen (sprite / judge) | held out | riding (sprite) | "
            "FD judge (floor) |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for s in rows:
        g = {k: s[k]["generated"] for k in ("singles", "pairs_seen", "pairs_heldout", "showcase_words")}
        lines.append(
            f"| {s['row']} | {g['singles']['sprite_top1']:.3f} / {g['singles']['sprite_top5']:.3f} | "
            f"{g['singles']['judge_top1']:.3f} / {g['singles']['judge_top5']:.3f} | "
            f"{g['pairs_seen']['sprite_top1']:.3f} / {g['pairs_seen']['judge_top1']:.3f} | "
            f"{g['pairs_heldout']['sprite_top1']:.3f} / {g['pairs_heldout']['judge_top1']:.3f} | "
            f"{g['pairs_seen']['sprite_all']:.3f} / {g['pairs_seen']['judge_all']:.3f} | "
            f"{g['pairs_heldout']['sprite_all']:.3f} / {g['pairs_heldout']['judge_all']:.3f} | "
            + ", ".join(f"{v['sprite']:.2f}" for v in g["showcase_words"]["by_prompt"].values()) + " | "
            f"{s['fd_judge']['generated']:.1f} ({s['fd_judge']['real_floor']:.1f}) |")
    print("\n".join(lines))
    return {"rows": len(rows)}


def cmd_picture(args: argparse.Namespace) -> dict:
    from diffgen.sampling.images import labelled_grid

    model = load(args)
    rows = args.rows.split(",")
    prompts = list(args.prompts or PICTURE_PROMPTS)
    columns = {row: images_of(model, *parse_row(row), prompts, [args.seed] * len(prompts), args.guidance,
                              upscale=args.upscale) for row in rows}
    cells, labels = [], []
    for k, prompt in enumerate(prompts):
        for row in rows:
            cells.append(columns[row][k])
            labels.append(f"{prompt} ({row})" if row == rows[0] else row)
    picture = labelled_grid(cells, labels, columns=len(rows))
    picture.save(args.picture)
    print(f"picture: {args.picture}")
    return {"picture": str(args.picture)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("cost", "judge", "picture", "table"))
    parser.add_argument("-c", "--checkpoint", type=Path, default=ROOT / "checkpoints" / "default.safetensors")
    parser.add_argument("--student", type=Path, default=None, help="the student file (diffgen train --distill)")
    parser.add_argument("--rows", default=ROWS, help=f"comma-separated (default {ROWS}; also startK)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--concepts", type=int, default=131, help="judge: the first N concepts' singles")
    parser.add_argument("--seeds", type=int, default=2, help="judge: seeds per single concept")
    parser.add_argument("--pairs", type=int, default=96, help="judge: seen and held-out pairs each")
    parser.add_argument("--judge", type=Path, default=None, help="the shape judge (default: see the docstring)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "distill-bench")
    parser.add_argument("--redo", action="store_true", help="judge: recompute rows already written")
    parser.add_argument("--repeats", type=int, default=3, help="cost: timed repeats (the best is kept)")
    parser.add_argument("--picture", type=Path, default=Path("distill-steps.png"))
    parser.add_argument("--prompts", nargs="+", default=None, help="picture: the prompts (rows)")
    parser.add_argument("--seed", type=int, default=0, help="picture: the seed of every cell")
    parser.add_argument("--upscale", action="store_true", help="picture: at the upscaled size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"cost": cmd_cost, "judge": cmd_judge, "picture": cmd_picture, "table": cmd_table}[args.mode](args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
