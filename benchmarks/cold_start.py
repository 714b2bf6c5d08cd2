"""Cold start: `diffgen --help` and the first PNG from the default model, each in a fresh process.

    python benchmarks/cold_start.py [--runs 3] [--baseline PATH]

Each run starts a new Python process (nothing cached in memory but the OS page cache, which the
first, discarded, run warms). ``--baseline PATH`` times another checkout of diffgen (put first on
PYTHONPATH) alternately with this one. A second table splits the first image into phases, timed
with perf_counter inside one process. Prints Markdown for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PHASES = r"""
import time, sys
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
import diffgen
from diffgen.checkpoint import default_checkpoint, load_model
t.append(time.perf_counter())
model = diffgen.load(default_checkpoint(), device="cpu")
t.append(time.perf_counter())
model.encode("panda on a bike")
t.append(time.perf_counter())
images = model.sample("panda on a bike", seed=0)
t.append(time.perf_counter())
images[0].save(sys.argv[1])
t.append(time.perf_counter())
names = ["import torch", "import diffgen", "load the default model", "tokenizer + text encoding",
         "sampling (20 steps, guidance: 2 U-Net rows per step)", "PNG write"]
for name, a, b in zip(names, t, t[1:]):
    print(f"{name}\t{b - a:.3f}")
print("open_clip imported" if "open_clip" in sys.modules else "open_clip not imported")
"""


def timed(command: list[str], checkout: str) -> float:
    start = time.perf_counter()
    # run from the checkout: `python -m` puts the working folder first on sys.path
    subprocess.run(command, env=environment(checkout), cwd=checkout, check=True, capture_output=True)
    return time.perf_counter() - start


def environment(pythonpath: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another diffgen checkout to time alternately")
    args = parser.parse_args()
    checkouts = {"this checkout": str(ROOT)}
    if args.baseline:
        checkouts["baseline"] = str(args.baseline.resolve())
    out = Path(tempfile.mkdtemp(prefix="diffgen-cold-"))
    commands = {
        "`diffgen --help`": lambda i: [sys.executable, "-m", "diffgen", "--help"],
        "first PNG: `diffgen sample \"panda on a bike\" -n 1`": lambda i: [
            sys.executable, "-m", "diffgen", "sample", "panda on a bike", "-n", "1", "--seed", "0",
            "-o", str(out / f"run{i}"), "--overwrite"],
    }
    times: dict[tuple[str, str], list[float]] = {}
    for what, command in commands.items():
        for path in checkouts.values():
            timed(command(-1), path)  # warms the page cache; not counted
        for i in range(args.runs):
            for name, path in checkouts.items():
                times.setdefault((what, name), []).append(timed(command(i), path))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    print(f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {args.runs} runs each, alternated\n")
    print("| what | " + " | ".join(checkouts) + " |")
    print("|---|" + "---|" * len(checkouts))
    for what in commands:
        cells = []
        for name in checkouts:
            values = times[(what, name)]
            cells.append(f"{statistics.median(values):.2f} s (" + ", ".join(f"{v:.2f}" for v in values) + ")")
        print(f"| {what} | " + " | ".join(cells) + " |")
    result = subprocess.run([sys.executable, "-c", PHASES, str(out / "phases.png")],
                            env=environment(str(ROOT)), cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.splitlines()
    print("\n| phase (this checkout, one process) | seconds |\n|---|---|")
    for line in result[:-1]:
        name, seconds = line.split("\t")
        print(f"| {name} | {float(seconds):.2f} |")
    print(f"\n{result[-1]}")


if __name__ == "__main__":
    main()
