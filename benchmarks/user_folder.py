"""A user's own folder on a CPU: train within a time budget, then judge the samples with a
classifier trained on the real images only.

The folder is scikit-learn's bundled handwritten digits (1,797 8 x 8 scans, drawn dark on white at
32 px, captions "a handwritten digit seven"): real data that diffgen did not make. 300 digits are
held back from the folder; they set the judge's ceiling (its accuracy on real held-out digits).
The judge is an RBF support-vector machine on the 8 x 8 grey levels, trained on the folder's digits;
a generated 32 px image is judged after the same reduction to 8 x 8 (the mean of each 4 x 4 block).

    pip install scikit-learn        # the benchmark's only extra dependency
    .venv/bin/python benchmarks/user_folder.py data runs/digits-data
    .venv/bin/python benchmarks/user_folder.py train runs/digits-data runs/digits-30 --budget 30 [--threads 2]
    .venv/bin/python benchmarks/user_folder.py judge runs/digits-data runs/digits-30/model.safetensors

``judge`` samples 10 images of each digit (seeds 0..99, the CLI's default sampler) and prints one
JSON line: accuracy (the share read as the prompted digit), its standard error, the judge's
ceiling on real held-out digits, and where the sample grid went.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HELD_BACK = 300
SIDE = 32


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) as ink in 0..16, labels (N,)) in a fixed shuffled order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    return bunch.images[order], bunch.target[order]


def to_picture(ink: np.ndarray) -> np.ndarray:
    """8 x 8 ink levels (0..16) -> a SIDE x SIDE RGB picture, dark strokes on white."""
    from PIL import Image

    grey = np.clip(255 - ink * 255 / 16, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grey).resize((SIDE, SIDE), Image.Resampling.BICUBIC).convert("RGB"))


def to_ink(picture: np.ndarray) -> np.ndarray:
    """A SIDE x SIDE RGB picture -> 8 x 8 ink levels (the mean of each block), flattened."""
    grey = picture.astype(np.float64).mean(axis=2)
    blocks = grey.reshape(8, SIDE // 8, 8, SIDE // 8).mean(axis=(1, 3))
    return ((255 - blocks) * 16 / 255).reshape(-1)


def write_data(folder: Path) -> None:
    from PIL import Image

    images, labels = digits()
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (ink, label) in enumerate(zip(images[HELD_BACK:], labels[HELD_BACK:])):
        name = f"digit{k:04d}.png"
        Image.fromarray(to_picture(ink)).save(folder / name)
        rows.append({"file_name": name, "text": f"a handwritten digit {WORDS[label]}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} digits to {folder} ({HELD_BACK} held back for the judge's ceiling)")


def judge_model(data: Path, model: Path, steps: int | None) -> dict:
    from PIL import Image
    from sklearn.svm import SVC

    images, labels = digits()
    train_x = np.stack([to_ink(to_picture(i)) for i in images[HELD_BACK:]])
    svm = SVC(gamma="scale", C=10).fit(train_x, labels[HELD_BACK:])
    ceiling = float((svm.predict(np.stack([to_ink(to_picture(i)) for i in images[:HELD_BACK]]))
                     == labels[:HELD_BACK]).mean())
    out = model.parent / "judged"
    prompts = "".join(json.dumps({"prompt": f"a handwritten digit {w}", "n": 10, "seed": 10 * d}) + "\n"
                      for d, w in enumerate(WORDS))
    prompt_file = model.parent / "judge-prompts.jsonl"
    prompt_file.write_text(prompts)
    started = time.perf_counter()
    command = [str(Path(sys.executable).with_name("diffgen")), "sample", "-f", str(prompt_file),
               "-c", str(model), "-o", str(out), "-q", "--overwrite", "--grid"]
    command += ["--steps", str(steps)] if steps else []
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    hits = []  # images are numbered in prompt order, ten per digit
    for path in sorted(out.glob("[0-9]*.png")):
        index = int(path.name.split("-")[0])
        with Image.open(path) as picture:
            small = picture.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BOX)
        hits.append(int(svm.predict(to_ink(np.asarray(small))[None])[0] == index // 10))
    accuracy = float(np.mean(hits))
    return {"model": str(model), "images": len(hits), "accuracy": round(accuracy, 3),
            "standard_error": round(float(np.sqrt(accuracy * (1 - accuracy) / len(hits))), 3),
            "ceiling_real_held_out": round(ceiling, 3), "sampling_seconds": round(seconds, 1),
            "grid": str(next(out.glob("grid*.png"), ""))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data")
    data.add_argument("folder", type=Path)
    train = sub.add_parser("train")
    train.add_argument("folder", type=Path)
    train.add_argument("out", type=Path)
    train.add_argument("--budget", type=float, required=True, help="minutes")
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--config", help="a preset or TOML file (default: the built-in config)")
    judge = sub.add_parser("judge")
    judge.add_argument("folder", type=Path)
    judge.add_argument("model", type=Path)
    judge.add_argument("--steps", type=int)
    args = parser.parse_args()
    if args.command == "data":
        write_data(args.folder)
    elif args.command == "train":
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("diffgen")), "train", str(args.folder), "-o", str(args.out),
                        "--budget", str(args.budget), "--threads", str(args.threads),
                        *(["--config", args.config] if args.config else [])], check=True)
        print(json.dumps({"run": str(args.out), "budget_minutes": args.budget,
                          "wall_minutes": round((time.perf_counter() - started) / 60, 2)}))
    else:
        print(json.dumps(judge_model(args.folder, args.model, args.steps)))


if __name__ == "__main__":
    main()
