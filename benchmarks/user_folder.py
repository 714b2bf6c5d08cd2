"""A user's own folder on a CPU: train within a time budget, then judge the samples with a
classifier trained on the real images only.

Two folders made from scikit-learn's bundled handwritten digits (1,797 8 x 8 scans): real data that
diffgen did not make. 300 digits are held back from both folders; they set the judge's ceiling.

- ``digits``: each of the other 1,497 digits drawn dark on white at 32 px, captioned "a handwritten
  digit seven" (10 distinct captions: class labels).
- ``pairs``: 3,000 pictures of two different digits at 32 px, side by side or one above the other,
  each digit drawn at 16 px in its half, with captions in seven phrasings ("a handwritten three to
  the left of a seven", "a handwritten seven to the right of a three", "the number 37", "3 over 7", ...): 630
  distinct captions that say which digit goes where.

The judge is an RBF support-vector machine on 8 x 8 grey levels, trained on the folder's digits
only; a generated picture is judged after the same reduction to 8 x 8 (the mean of each block of
the whole picture, or of each digit's half for the pairs). FD is the Frechet distance between the
samples and the folder's images in the run's own CLIP image features, beside the same distance for
as many real held-back pictures (its floor at that sample size).

    pip install scikit-learn        # the benchmark's only extra dependency
    .venv/bin/python benchmarks/user_folder.py data runs/digits-data [--set pairs]
    .venv/bin/python benchmarks/user_folder.py train runs/digits-data runs/digits-30 --budget 30 [--threads 2]
    .venv/bin/python benchmarks/user_folder.py judge runs/digits-data runs/digits-30/model.safetensors

``judge`` samples 100 images (digits: 10 of each digit; pairs: 50 prompts x 2 seeds; the CLI's
default sampler) and prints one JSON line: accuracy (digits: the share read as the prompted digit;
pairs: the share with both digits right, and the per-digit rate), its standard error, the judge's
ceiling on real held-back pictures, FD and its floor, and where the sample grid went.
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
PAIR_IMAGES = 3000
# (template, vertical): {A}/{B} are words ({aA}/{aB} with their article), {a}/{b} numerals; the
# first digit is left of (or above) the second
PAIR_TEMPLATES = (
    ("a handwritten {A} to the left of {aB}", False),
    ("a handwritten {B} to the right of {aA}", False),
    ("the number {a}{b}", False),
    ("{A} and {B} written side by side", False),
    ("a handwritten {A} above {aB}", True),
    ("a handwritten {B} below {aA}", True),
    ("{a} over {b}", True),
)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) as ink in 0..16, labels (N,)) in a fixed shuffled order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    return bunch.images[order], bunch.target[order]


def to_picture(ink: np.ndarray, side: int = SIDE) -> np.ndarray:
    """8 x 8 ink levels (0..16) -> a side x side RGB picture, dark strokes on white."""
    from PIL import Image

    grey = np.clip(255 - ink * 255 / 16, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grey).resize((side, side), Image.Resampling.BICUBIC).convert("RGB"))


def to_ink(picture: np.ndarray) -> np.ndarray:
    """A square RGB picture (side a multiple of 8) -> 8 x 8 ink levels (block means), flattened."""
    grey = picture.astype(np.float64).mean(axis=2)
    k = grey.shape[0] // 8
    blocks = grey.reshape(8, k, 8, k).mean(axis=(1, 3))
    return ((255 - blocks) * 16 / 255).reshape(-1)


def pair_caption(template: str, a: int, b: int) -> str:
    def article(d: int) -> str:
        return ("an " if WORDS[d][0] == "e" else "a ") + WORDS[d]

    return template.format(A=WORDS[a], B=WORDS[b], aA=article(a), aB=article(b), a=a, b=b)


def pair_picture(first: np.ndarray, second: np.ndarray, vertical: bool) -> np.ndarray:
    """Two digits' ink -> a SIDE px picture: ``first`` left of (or above) ``second``, each in a
    half-size cell centred across the other axis."""
    canvas = np.full((SIDE, SIDE, 3), 255, dtype=np.uint8)
    half, quarter = SIDE // 2, SIDE // 4
    for k, ink in enumerate((first, second)):
        cell = to_picture(ink, half)
        if vertical:
            canvas[k * half:(k + 1) * half, quarter:quarter + half] = cell
        else:
            canvas[quarter:quarter + half, k * half:(k + 1) * half] = cell
    return canvas


def pair_cells(picture: np.ndarray, vertical: bool) -> tuple[np.ndarray, np.ndarray]:
    """The two digit cells of a pair picture (the inverse of ``pair_picture``'s placement)."""
    half, quarter = SIDE // 2, SIDE // 4
    if vertical:
        return picture[:half, quarter:quarter + half], picture[half:, quarter:quarter + half]
    return picture[quarter:quarter + half, :half], picture[quarter:quarter + half, half:]


def write_data(folder: Path, kind: str) -> None:
    from PIL import Image

    images, labels = digits()
    images, labels = images[HELD_BACK:], labels[HELD_BACK:]
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    if kind == "digits":
        for k, (ink, label) in enumerate(zip(images, labels)):
            name = f"digit{k:04d}.png"
            Image.fromarray(to_picture(ink)).save(folder / name)
            rows.append({"file_name": name, "text": f"a handwritten digit {WORDS[label]}"})
    else:
        rng = np.random.default_rng(1)
        for k in range(PAIR_IMAGES):
            i, j = rng.choice(len(labels), 2, replace=False)
            while labels[j] == labels[i]:
                j = rng.integers(len(labels))
            template, vertical = PAIR_TEMPLATES[rng.integers(len(PAIR_TEMPLATES))]
            name = f"pair{k:04d}.png"
            Image.fromarray(pair_picture(images[i], images[j], vertical)).save(folder / name)
            rows.append({"file_name": name, "text": pair_caption(template, labels[i], labels[j])})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    captions = len({r["text"] for r in rows})
    print(f"wrote {len(rows)} {kind} ({captions} distinct captions) to {folder} "
          f"({HELD_BACK} digits held back for the judge's ceiling)")


def judge_prompts(kind: str) -> list[dict]:
    """The judged prompts, each with what a right picture shows: (digits, vertical)."""
    if kind == "digits":
        return [{"prompt": f"a handwritten digit {w}", "n": 10, "seed": 10 * d, "truth": [d], "vertical": False}
                for d, w in enumerate(WORDS)]
    rng = np.random.default_rng(2)
    rows = []
    for k in range(50):
        a, b = rng.choice(10, 2, replace=False)
        template, vertical = PAIR_TEMPLATES[k % len(PAIR_TEMPLATES)]
        rows.append({"prompt": pair_caption(template, int(a), int(b)), "n": 2, "seed": 2 * k,
                     "truth": [int(a), int(b)], "vertical": vertical})
    return rows


def read_digits(svm, picture: np.ndarray, kind: str, vertical: bool) -> list[int]:
    """The judge's reading of a picture: one digit, or a pair's two in order."""
    cells = [picture] if kind == "digits" else list(pair_cells(picture, vertical))
    return [int(d) for d in svm.predict(np.stack([to_ink(c) for c in cells]))]


def judge_model(data: Path, model: Path, steps: int | None, guidance: float | None = None) -> dict:
    from PIL import Image
    from sklearn.svm import SVC

    kind = "pairs" if next(data.glob("pair*.png"), None) else "digits"
    images, labels = digits()
    side = SIDE if kind == "digits" else SIDE // 2
    svm = SVC(gamma="scale", C=10).fit(np.stack([to_ink(to_picture(i, side)) for i in images[HELD_BACK:]]),
                                       labels[HELD_BACK:])
    prompts = judge_prompts(kind)
    real = real_pictures(kind, prompts, images[:HELD_BACK], labels[:HELD_BACK])
    ceiling = np.mean([read_digits(svm, p, kind, row["vertical"]) == row["truth"] for p, row in real])
    out = model.parent / ("judged" if guidance is None else f"judged-g{guidance:g}")
    prompt_file = model.parent / "judge-prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "n", "seed")}) + "\n" for r in prompts))
    started = time.perf_counter()
    command = [str(Path(sys.executable).with_name("diffgen")), "sample", "-f", str(prompt_file),
               "-c", str(model), "-o", str(out), "-q", "--overwrite", "--grid"]
    command += ["--steps", str(steps)] if steps else []
    command += ["--guidance", str(guidance)] if guidance is not None else []
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    owner = [row for row in prompts for _ in range(row["n"])]  # images are numbered in prompt order
    hits, digit_hits, samples = [], [], []
    for path in sorted(out.glob("[0-9]*.png")):
        row = owner[int(path.name.split("-")[0])]
        with Image.open(path) as picture:
            small = np.asarray(picture.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BOX))
        samples.append(small)
        read = read_digits(svm, small, kind, row["vertical"])
        hits.append(int(read == row["truth"]))
        digit_hits += [int(r == t) for r, t in zip(read, row["truth"])]
    accuracy = float(np.mean(hits))
    result = {"model": str(model), "set": kind, "images": len(hits), "accuracy": round(accuracy, 3),
              "standard_error": round(float(np.sqrt(accuracy * (1 - accuracy) / len(hits))), 3),
              "ceiling_real_held_back": round(float(ceiling), 3)}
    if kind == "pairs":
        result["per_digit"] = round(float(np.mean(digit_hits)), 3)
    result.update(feature_distances(model, data, np.stack(samples), np.stack([p for p, _ in real])))
    result.update({"sampling_seconds": round(seconds, 1), "grid": str(next(out.glob("grid*.png"), ""))})
    return result


def real_pictures(kind: str, prompts: list[dict], images: np.ndarray, labels: np.ndarray) -> list:
    """Real held-back pictures of what each judged prompt asks for, as many as are sampled."""
    by_label = [images[labels == d] for d in range(10)]
    rng = np.random.default_rng(3)
    pictures = []
    for row in prompts:
        for _ in range(row["n"]):
            inks = [by_label[d][rng.integers(len(by_label[d]))] for d in row["truth"]]
            picture = to_picture(inks[0]) if kind == "digits" else pair_picture(*inks, row["vertical"])
            pictures.append((picture, row))
    return pictures


def feature_distances(model: Path, data: Path, samples: np.ndarray, real: np.ndarray) -> dict:
    """FD of the samples to the folder's images in the run's CLIP image features, and the same for
    as many real held-back pictures (the floor at this sample size)."""
    import torch
    from PIL import Image

    from diffgen.checkpoint import load_model
    from diffgen.engine.pixels import from_uint8
    from diffgen.evaluate import frechet_distance, image_features

    net = load_model(model, torch.device("cpu"), image_tower=True)
    folder = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(data.glob("*.png"))])

    def features(pictures: np.ndarray) -> torch.Tensor:
        return image_features(net, from_uint8(torch.from_numpy(pictures).permute(0, 3, 1, 2)))

    reference = features(folder)
    return {"fd": round(frechet_distance(features(samples), reference), 3),
            "fd_floor_real": round(frechet_distance(features(real), reference), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data")
    data.add_argument("folder", type=Path)
    data.add_argument("--set", choices=("digits", "pairs"), default="digits")
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
    judge.add_argument("--guidance", type=float)
    args = parser.parse_args()
    if args.command == "data":
        write_data(args.folder, args.set)
    elif args.command == "train":
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("diffgen")), "train", str(args.folder), "-o", str(args.out),
                        "--budget", str(args.budget), "--threads", str(args.threads),
                        *(["--config", args.config] if args.config else [])], check=True)
        print(json.dumps({"run": str(args.out), "budget_minutes": args.budget,
                          "wall_minutes": round((time.perf_counter() - started) / 60, 2)}))
    else:
        print(json.dumps(judge_model(args.folder, args.model, args.steps, args.guidance)))


if __name__ == "__main__":
    main()
