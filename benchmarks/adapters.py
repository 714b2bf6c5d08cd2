"""Teaching the default model new emoji with adapters (issue 35): data, training, judging.

Concepts: Noto emoji that the default model was never trained on (not in diffgen/emoji/concepts.py),
each named by its own English word, which no training caption used. For each, 8 renders by the
data's composer (varied sizes, places, backgrounds) captioned "a <word>" are the folder; `diffgen
train --adapter KIND` teaches it (lora, embedding, both); the images are judged by the project's
shape judge (diffgen/emoji/judge.py) trained on renders of the 131 known concepts *and* the new
ones (renders only, never generated images):

- new singles: "a <word>", seeds 0..7; the judge's top-1 and top-5 rate for <word>;
- pairs: "a <word> to the left of a cat" and "a dog above a <word>", 4 seeds each; each object
  judged in its half (diffgen/emoji/scorecard.py); both ranked first ("both") and each in the top 5;
- forgetting: "a <known>" for the known concepts (``--known``, default all 131), one seed each, with
  the adapter and without it; the judge's top-5 rate side by side;
- the CPU seconds of the training process (user + system, from getrusage) and the file size.

    .venv/bin/python benchmarks/adapters.py data runs/adapters-bench [--concepts 10]
    .venv/bin/python benchmarks/adapters.py train runs/adapters-bench [--kinds lora,embedding,both] [--threads 2]
        [--steps 300] [--time-limit MINUTES] [--only WORD]
    .venv/bin/python benchmarks/adapters.py judge runs/adapters-bench [--only WORD] [--known 131]
    .venv/bin/python benchmarks/adapters.py picture runs/adapters-bench --only kangaroo --kinds lora --tag=-s50
    .venv/bin/python benchmarks/adapters.py table runs/adapters-bench --kinds lora,embedding,both,lora-s50

``data`` also trains the judge once (runs/adapters-bench/judge.safetensors) and prints its accuracy
on fresh renders. ``judge`` prints one JSON line per (concept, kind) and writes results.json; each
step skips what an earlier call already made, so the three can be run in pieces.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Candidates, in order; the first --concepts of them that the emoji package and font have are used.
NEW_WORDS = ("kangaroo", "flamingo", "sloth", "otter", "llama", "peacock", "parrot", "avocado", "lobster",
             "giraffe", "zebra", "squid", "hippopotamus", "badger", "swan", "beaver")
RENDERS = 8
SEEDS = 8


def new_concepts(count: int) -> list[Any]:
    from diffgen.emoji.scenes import Concept, concepts

    known = {c.cldr for c in concepts()} | {c.name for c in concepts()}
    fresh = [Concept(w, w, f"{w}s", "animal") for w in NEW_WORDS if w not in known]
    return fresh[:count]


def load_concepts(root: Path) -> list[Any]:
    from diffgen.emoji.scenes import Concept

    return [Concept(**c) for c in json.loads((root / "concepts.json").read_text())]


def composer_for(root: Path | None, new: list[Any], size: int) -> tuple[Any, dict, list[Any]]:
    from diffgen.emoji.scenes import SceneComposer, concepts, find_font, render_sprites

    items = concepts() + new
    sprites = render_sprites(find_font(), items)
    return SceneComposer(sprites, items, size, held_out=set()), sprites, items


def cmd_data(args: argparse.Namespace) -> None:
    import dataclasses

    import diffgen
    from diffgen.emoji.judge import save_judge, train_judge

    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    new = new_concepts(args.concepts)
    (root / "concepts.json").write_text(json.dumps([dataclasses.asdict(c) for c in new]))
    size = diffgen.load(device="cpu").image_size
    composer, _, items = composer_for(root, new, size)
    for concept in new:
        folder = root / f"data-{concept.name}"
        folder.mkdir(exist_ok=True)
        rng = random.Random(f"renders/{concept.name}")
        for k in range(RENDERS):
            composer.single_scene(rng, concept).image.save(folder / f"{k:02d}.png")
            (folder / f"{k:02d}.txt").write_text(f"{concept.with_article()}\n")
    print(f"{len(new)} concepts, {RENDERS} renders each at {size} px: {', '.join(c.name for c in new)}")
    if not (root / "judge.safetensors").is_file():
        judge, info = train_judge(composer, items, log=lambda m: print(m, file=sys.stderr))
        save_judge(judge, info, root / "judge.safetensors")
        print(json.dumps({"judge": info}))


def cmd_train(args: argparse.Namespace) -> None:
    for concept in load_concepts(args.root):
        if args.only and concept.name not in args.only.split(","):
            continue
        for kind in args.kinds.split(","):
            run = args.root / f"run-{concept.name}-{kind}{args.tag}"
            if (run / "adapter.safetensors").is_file():
                continue
            command = [sys.executable, "-m", "diffgen", "train", str(args.root / f"data-{concept.name}"),
                       "--adapter", kind, "-o", str(run), "--steps", str(args.steps), "--threads", str(args.threads),
                       "--device", "cpu", "-q", "--scenes", str(args.scenes), "--prior-weight", str(args.prior_weight)]
            if args.time_limit:
                command += ["--time-limit", str(args.time_limit)]
            if (run / "state").is_dir():
                command.append("--resume")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if result.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
            cost = {"cpu_seconds": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
                    "wall_seconds": round(time.perf_counter() - started, 1), "threads": args.threads}
            (run / "cost.json").write_text(json.dumps(cost))
            print(json.dumps({"concept": concept.name, "kind": kind, **cost,
                              **{k: v for k, v in json.loads(result.stdout).items() if k in ("steps", "bytes")}}))


def cmd_judge(args: argparse.Namespace) -> None:
    import diffgen
    from diffgen.adapters import AdapterSpec, attach_adapters, detach_adapters
    from diffgen.emoji.judge import load_judge
    from diffgen.emoji.scenes import concepts
    from diffgen.emoji.scorecard import ImageAsk, ObjectAsk, Scorecard, pair_objects, sample_section

    root = args.root
    new = load_concepts(root)
    model = diffgen.load(device="cpu").diffusion_model
    size = model.config.image_size
    _, sprites, items = composer_for(root, new, size)
    judge, judge_info = load_judge(root / "judge.safetensors")
    card = Scorecard(sprites, items, judge, size, pairs=0, showcase_seeds=0)
    known = [c for c in concepts()][: args.known]

    def score(asks: list[ImageAsk], label: str) -> dict[str, Any]:
        card.sections[label] = asks
        images = sample_section(model, asks, steps=args.sample_steps, guidance=args.guidance)
        return card.judge_section(label, images)

    def singles(words: list[str], seeds: int) -> list[ImageAsk]:
        by_name = {c.name: c for c in items}
        return [ImageAsk(by_name[w].with_article(), (ObjectAsk(w, (0, 0, size, size), None),))
                for w in words for _ in range(seeds)]

    path = root / args.results
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["judge"] = judge_info
    results["settings"] = {"sample_steps": args.sample_steps, "guidance": args.guidance, "seeds": SEEDS}

    def save() -> None:  # after each entry: a long call stopped halfway keeps what it judged
        path.write_text(json.dumps(results, indent=1))
    if args.known and "base_known" not in results:
        results["base_known"] = score(singles([c.name for c in known], 1), "known")
        results["base_known"]["known_concepts"] = len(known)
        save()
    for concept in new:
        if args.only and concept.name not in args.only.split(","):
            continue
        word = concept.name
        named = concept.with_article()
        pairs = [ImageAsk(f"{named} to the left of a cat", pair_objects("left of", word, "cat", size), "left of")
                 for _ in range(SEEDS // 2)]
        pairs += [ImageAsk(f"a dog above {named}", pair_objects("above", "dog", word, size), "above")
                  for _ in range(SEEDS // 2)]
        key = f"{word}/base"
        if key not in results:
            results[key] = {"singles": score(singles([word], SEEDS), "new"), "pairs": score(pairs, "pairs")}
            save()
        for kind in args.kinds.split(","):
            run, key = root / f"run-{word}-{kind}{args.tag}", f"{word}/{kind}{args.tag}"
            key += f"@{args.weight:g}" if args.weight != 1.0 else ""
            done = results.get(key, {})
            if not (run / "adapter.safetensors").is_file() or (done and (not args.known or "known" in done)):
                continue
            attached = attach_adapters(model, [AdapterSpec(run / "adapter.safetensors", args.weight)])
            try:
                entry = done or {"singles": score(singles([word], SEEDS), "new"), "pairs": score(pairs, "pairs")}
                if args.known:  # an earlier call without --known may have judged the rest
                    entry["known"] = score(singles([c.name for c in known], 1), "known")
                    entry["known_concepts"] = len(known)
            finally:
                detach_adapters(model, attached)
            entry.update(json.loads((run / "cost.json").read_text()) if (run / "cost.json").is_file() else {})
            entry["bytes"] = (run / "adapter.safetensors").stat().st_size
            results[key] = entry
            save()
            print(json.dumps({"concept": word, "kind": kind, **entry}))
    save()


def cmd_table(args: argparse.Namespace) -> None:
    """results.json as Markdown: a row per concept and variant, then each variant's mean."""
    results: dict[str, Any] = {}
    for path in sorted(args.root.glob("results*.json")):  # judge --results: a second judge's file
        for key, value in json.loads(path.read_text()).items():  # an entry's parts may be in two files
            results[key] = {**value, **results[key]} if isinstance(results.get(key), dict) else value
    variants = [v for v in ["base", *args.kinds.split(",")]]
    rows, sums = [], {}
    head = ("| concept | variant | \"a WORD\" top-1 | top-5 | pairs: both | each | known top-5 (base) "
            "| CPU-s | KB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    base_known = results.get("base_known", {}).get("judge_top5")
    for concept in load_concepts(args.root):
        for variant in variants:
            entry = results.get(f"{concept.name}/{variant}")
            if entry is None:
                continue
            single, pair, known = entry["singles"], entry["pairs"], entry.get("known", {}).get("judge_top5")
            values = [single["judge_top1"], single["judge_top5"], pair["judge_all"], pair["judge_top1"]]
            sums.setdefault(variant, []).append(values + [known])
            known_text = "" if known is None else f"{known:.3f} ({base_known:.3f})"
            rows.append(f"| {concept.name} | {variant} | {values[0]:.3f} | {values[1]:.3f} | {values[2]:.3f} | "
                        f"{values[3]:.3f} | {known_text} | {entry.get('cpu_seconds', '')} | "
                        f"{round(entry['bytes'] / 1000) if 'bytes' in entry else ''} |")
    print(head)
    print("\n".join(rows))
    for variant, values in sums.items():
        n = len(values)
        means = [sum(v[i] for v in values) / n for i in range(4)]
        knowns = [v[4] for v in values if v[4] is not None]
        known_text = f"{sum(knowns) / len(knowns):.3f} ({len(knowns)} adapters)" if knowns else ""
        print(f"| **mean of {n}** | {variant} | {means[0]:.3f} | {means[1]:.3f} | {means[2]:.3f} | {means[3]:.3f} "
              f"| {known_text} | | |")


def cmd_picture(args: argparse.Namespace) -> None:
    """The README's walk-through picture: the folder's 8 pictures, then the same prompts and seeds
    without the adapter and with it."""
    from PIL import Image

    import diffgen
    from diffgen.sampling.images import labelled_grid

    word = args.only or "kangaroo"
    concept = next(c for c in load_concepts(args.root) if c.name == word)
    adapter = args.root / f"run-{word}-{args.kinds.split(',')[0]}{args.tag}" / "adapter.safetensors"
    model = diffgen.load(device="cpu")
    named = concept.with_article()
    prompts = [named, named, named, f"{named} to the left of a cat", f"a dog above {named}",
               f"{named} next to a tree", f"{named} riding a bicycle", f"two {concept.plural}"]
    folder = sorted((args.root / f"data-{word}").glob("*.png"))
    images = [Image.open(p).convert("RGB") for p in folder]
    labels = [f"folder: {(p.with_suffix('.txt')).read_text().strip()}" for p in folder]
    for adapters, tag in (((), "without"), *(([(adapter, w)], f"adapter at {w:g}") for w in args.weight)):
        for k, prompt in enumerate(prompts):
            images += model.sample(prompt, n=1, seed=k, adapters=adapters)
            labels.append(f"{prompt} ({tag})")
    labelled_grid(images, labels, columns=8, cell=128).save(args.out)
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("data", "train", "judge", "picture", "table"):
        p = sub.add_parser(name)
        p.add_argument("root", type=Path)
        p.add_argument("--only", default=None, help="these concepts' words (comma-separated)")
        p.add_argument("--kinds", default="lora,embedding,both")
        p.add_argument("--tag", default="", help="suffix of the run folders (a variant's runs)")
    sub.choices["data"].add_argument("--concepts", type=int, default=10)
    sub.choices["picture"].add_argument("--weight", type=float, nargs="+", default=[1.0, 0.8],
                                        help="the adapter's weights, a row each")
    sub.choices["picture"].add_argument("--out", type=Path, default=ROOT / "docs/images/adapter-walkthrough.png")
    sub.choices["train"].add_argument("--threads", type=int, default=2)
    sub.choices["train"].add_argument("--steps", type=int, default=300)
    sub.choices["train"].add_argument("--scenes", type=float, default=0.5, help="train --scenes")
    sub.choices["train"].add_argument("--prior-weight", type=float, default=1.0, help="train --prior-weight")
    sub.choices["train"].add_argument("--time-limit", type=float, default=None, help="minutes per run")
    sub.choices["judge"].add_argument("--results", default="results.json",
                                      help="file under root (another name lets two judges run at once)")
    sub.choices["judge"].add_argument("--weight", type=float, default=1.0, help="the adapters' weight")
    sub.choices["judge"].add_argument("--known", type=int, default=131, help="known concepts checked for drift")
    sub.choices["judge"].add_argument("--sample-steps", type=int, default=20)
    sub.choices["judge"].add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args()
    from diffgen.threads import apply_threads

    apply_threads(1)  # this process samples and judges on one thread; training runs use --threads
    {"data": cmd_data, "train": cmd_train, "judge": cmd_judge, "picture": cmd_picture,
     "table": cmd_table}[args.command](args)


if __name__ == "__main__":
    main()
