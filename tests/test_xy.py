"""Setting grids: every cell is the image `diffgen sample` makes alone with that cell's settings."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from diffgen.cli import app


def run(*args):
    return CliRunner().invoke(app, ["sample", *map(str, args)])


def test_each_cell_is_the_standalone_image_and_each_z_value_gets_a_grid(tiny_checkpoint, tmp_path):
    out = tmp_path / "xy"
    result = run("a red square", "--xy", "guidance=1,2.5", "--xy", "steps=2,3", "--xy", "sampler=euler,heun",
                 "--seed", "7", "-c", tiny_checkpoint, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    cells = sorted(out.glob("0*.png"))
    grids = sorted(out.glob("xy-*.png"))
    assert len(cells) == 8 and [g.name for g in grids] == ["xy-a-red-square-7-sampler-euler.png",
                                                          "xy-a-red-square-7-sampler-heun.png"]
    recipes = [json.loads(Image.open(c).info["diffgen"]) for c in cells]
    assert {r["seed"] for r in recipes} == {7}
    assert [(r["sampler"], r["steps"], r["guidance"]) for r in recipes] == [
        (s, n, g) for s in ("euler", "heun") for n in (2, 3) for g in (1.0, 2.5)]
    alone = tmp_path / "alone"
    assert run("a red square", "-n", "1", "--seed", "7", "--steps", "3", "-g", "2.5", "--sampler", "heun",
               "-c", tiny_checkpoint, "-o", alone, "-q").exit_code == 0
    with Image.open(next(alone.glob("*.png"))) as a, Image.open(cells[7]) as b:
        assert a.tobytes() == b.tobytes()
    with Image.open(grids[0]) as grid:
        assert grid.width > 2 * 128 and grid.height > 2 * 128  # 2 x 2 cells with headers


def test_bad_grids_are_one_line_exit_2(tiny_checkpoint, tmp_path):
    for args, message in ((["a", "b", "--xy", "steps=2,3"], "exactly one PROMPT"),
                          (["a", "--xy", "colour=1,2"], "NAME one of"),
                          (["a", "--xy", "steps=two"], "are not all int"),
                          (["a", "--xy", "steps=0,2"], "steps must be"),
                          (["a", "--xy", "seed=" + ",".join(map(str, range(33))), "--xy",
                            "steps=" + ",".join(map(str, range(1, 33)))], "at most 1,024")):
        result = run(*args, "-c", tiny_checkpoint, "-o", tmp_path / "x")
        assert result.exit_code == 2 and message in result.output, (args, result.output)


@pytest.mark.slow
def test_two_processes_write_the_files_one_process_writes(tiny_checkpoint, tmp_path):
    import os
    import subprocess
    import sys

    from .helpers import free_port

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square\na blue circle\na green triangle\n")
    args = ["sample", "-f", str(prompts), "-n", "3", "--seed", "2", "--steps", "3", "--batch-size", "2",
            "-c", str(tiny_checkpoint), "-q"]
    one = tmp_path / "one"
    assert run(*args[1:], "-o", one).exit_code == 0
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "diffgen", *args,
                           "-o", str(two)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = sorted(p.name for p in one.glob("*.png"))
    assert len(names) == 9 and names == sorted(p.name for p in two.glob("*.png"))
    assert all((one / n).read_bytes() == (two / n).read_bytes() for n in names)
    assert len(proc.stdout.split()) == 9  # each process prints the paths it wrote
