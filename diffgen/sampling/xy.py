"""Setting grids (AUTOMATIC1111's X/Y/Z plot): one prompt and one seed, every combination of up to
three settings, each cell its own PNG with its recipe, and one labelled grid per value of Z.

    diffgen sample "a cat" --xy guidance=1,2,3,5 --xy steps=10,20,40
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, ImageDraw

from diffgen.errors import InputError

# The settings an axis may vary, with how to read one value.
AXES = {"guidance": float, "steps": int, "sampler": str, "schedule": str, "seed": int, "strength": float}
MAX_AXES, MAX_CELLS = 3, 1024


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[Any, ...]


def parse_axis(text: str) -> Axis:
    """``name=v1,v2,...`` -> Axis; InputError naming what is wrong."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or name not in AXES:
        raise InputError(f"--xy {text!r}: give NAME=V1,V2,... with NAME one of {', '.join(AXES)}")
    try:
        parsed = tuple(AXES[name](v.strip()) for v in values.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--xy {name}: '{values}' are not all {AXES[name].__name__} values") from None
    if not parsed:
        raise InputError(f"--xy {name}: no values")
    return Axis(name, parsed)


def cell_tasks(prompt: str, seed: int, axes: list[Axis], defaults) -> list:
    """One ImageTask per combination (Z slowest, then Y, then X), all from ``seed`` unless an axis
    varies the seed; each task checked like any other."""
    from diffgen.sampling.tasks import ImageTask

    if not 1 <= len(axes) <= MAX_AXES:
        raise InputError(f"--xy takes one to {MAX_AXES} axes")
    if len({a.name for a in axes}) != len(axes):
        raise InputError("--xy: each setting may be an axis once")
    count = 1
    for axis in axes:
        count *= len(axis.values)
    if count > MAX_CELLS:
        raise InputError(f"--xy makes {count:,} cells; at most {MAX_CELLS:,}")
    tasks = []
    for k, combo in enumerate(itertools.product(*[a.values for a in reversed(axes)])):
        values = dict(zip([a.name for a in reversed(axes)], combo))
        task: ImageTask = replace(defaults, index=k, prompt=prompt, seed=values.pop("seed", seed))
        if "strength" in values:
            if task.edit is None:
                raise InputError("--xy strength=... needs an --init-image")
            task = replace(task, edit=replace(task.edit, strength=values.pop("strength")))
        tasks.append(replace(task, **values).validate())
    return tasks


def axis_grid(cells: list[Image.Image], x: Axis, y: Axis | None, title: str, cell: int = 128) -> Image.Image:
    """Cells (row-major, Y rows by X columns) under column headers (X values), beside row headers
    (Y values), below a title."""
    from diffgen.sampling.images import _font

    rows = len(y.values) if y is not None else 1
    font = _font(max(10, cell // 10))
    line = int(getattr(font, "size", 10) * 1.3)
    left = cell // 2 + 20 if y is not None else 4
    top = 2 * line + 8
    pad = 4
    grid = Image.new("RGB", (left + len(x.values) * (cell + pad) + pad, top + rows * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), title, fill="black", font=font)
    for j, value in enumerate(x.values):
        draw.text((left + j * (cell + pad) + pad, line + 4), f"{x.name} {value}", fill="black", font=font)
    for i in range(rows):
        if y is not None:
            draw.text((4, top + i * (cell + pad) + cell // 2), f"{y.name} {y.values[i]}", fill="black", font=font)
        for j in range(len(x.values)):
            image = cells[i * len(x.values) + j].resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(image, (left + j * (cell + pad) + pad, top + i * (cell + pad)))
    return grid


def write_axis_grids(paths: list, axes: list[Axis], out_dir, prompt: str, seed: int) -> list:
    """One grid image per Z value (one in all without a Z axis), next to the cells; their paths."""
    from pathlib import Path

    from diffgen.sampling.images import save_png, slugify

    x, y, z = axes[0], axes[1] if len(axes) > 1 else None, axes[2] if len(axes) > 2 else None
    per_grid = len(x.values) * (len(y.values) if y is not None else 1)
    written = []
    for g, z_value in enumerate(z.values if z is not None else [None]):
        cells = []
        for path in paths[g * per_grid:(g + 1) * per_grid]:
            with Image.open(path) as image:
                cells.append(image.convert("RGB"))
        seeded = "" if any(a.name == "seed" for a in axes) else f" (seed {seed})"
        title = f"{prompt}{seeded}" + (f", {z.name} {z_value}" if z is not None else "")
        name = f"xy-{slugify(prompt)}-{seed}" + (f"-{z.name}-{z_value}" if z is not None else "") + ".png"
        path = Path(out_dir) / name
        save_png(axis_grid(cells, x, y, title), path)
        written.append(path)
    return written
