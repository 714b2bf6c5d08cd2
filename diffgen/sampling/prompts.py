"""Prompt files: ``.txt`` (one prompt per line) and ``.jsonl`` (one object per line with overrides).

No torch here: the CLI reads and checks prompt files before it loads any model.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from diffgen.errors import InputError

# JSONL keys a line may set, with the type each must have.
_JSONL_KEYS: dict[str, tuple[type, ...]] = {
    "prompt": (str,), "negative": (str,), "n": (int,), "seed": (int,), "steps": (int,),
    "guidance": (int, float), "sampler": (str,), "place": (dict,), "layout_strength": (int, float),
    "auto_layout": (bool,), "upscale": (bool,),
}


@dataclass(frozen=True)
class PromptSpec:
    """One prompt, how many images to make of it, and its own settings (override the CLI's)."""

    prompt: str
    num_images: int
    seed: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # "file:line" of a prompt file's line: the errors its values cause name it


def _parse_jsonl_line(line: str, number: int, path: Path, num_images: int) -> PromptSpec:
    where = f"{path}:{number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: each line must be a JSON object with a 'prompt'")
    for key, value in data.items():
        if key not in _JSONL_KEYS:
            raise InputError(f"{where}: unknown key '{key}' (known: {', '.join(_JSONL_KEYS)})")
        if isinstance(value, bool) != (bool in _JSONL_KEYS[key]) or not isinstance(value, _JSONL_KEYS[key]):
            raise InputError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise InputError(f"{where}: missing or empty 'prompt'")
    n = data.get("n", num_images)
    if n < 1:
        raise InputError(f"{where}: 'n' must be at least 1")
    overrides = {k: data[k] for k in ("negative", "steps", "sampler", "auto_layout", "upscale") if k in data}
    if "guidance" in data:
        overrides["guidance"] = float(data["guidance"])
    if "place" in data:  # {"dog": [x0, y0, x1, y1], ...}: this line's layout (sampling/layout.py)
        from diffgen.sampling.layout import DEFAULT_LAYOUT_STRENGTH, Layout

        boxes = data["place"].values()
        if not data["place"] or any(not isinstance(b, list) or len(b) != 4 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in b) for b in boxes):
            raise InputError(f"{where}: 'place' maps names to boxes [x0, y0, x1, y1]")
        overrides["layout"] = Layout(tuple((name, *box) for name, box in data["place"].items()),
                                     float(data.get("layout_strength", DEFAULT_LAYOUT_STRENGTH)))
    elif "layout_strength" in data:
        raise InputError(f"{where}: 'layout_strength' needs a 'place'")
    return PromptSpec(data["prompt"].strip(), n, data.get("seed"), overrides, where)


# A prompt is used up to the text context (77 tokens by default); a JSONL line with its overrides
# fits well within this. Longer lines (a binary file, /dev/zero) are refused before they are held
# in memory.
MAX_LINE_CHARS = 20_000


# A prompt file that can be read only once (a pipe, -f /dev/stdin, <(...)) is read into memory, so
# that the check and the run read the same prompts; past this many characters it is refused. A
# regular file of any length is read again for the run instead, in constant memory.
MAX_STREAM_CHARS = 16 * 1024 * 1024


@dataclass(frozen=True)
class PromptText:
    """A prompt file that can be read only once, as it was read: its name and its text."""

    path: Path
    text: str


def _open(path: Path) -> TextIO:
    try:
        return open(path, encoding="utf-8", newline=None)
    except FileNotFoundError:
        raise InputError(f"prompt file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"prompt file is a folder: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None


def _lines(source: Path | PromptText) -> Iterator[tuple[int, str]]:
    """(number, line) pairs read one at a time, each at most MAX_LINE_CHARS long."""
    path = source.path if isinstance(source, PromptText) else source
    handle = io.StringIO(source.text) if isinstance(source, PromptText) else _open(source)
    with handle:
        number = 0
        while True:
            try:
                line = handle.readline(MAX_LINE_CHARS + 1)
            except UnicodeDecodeError:
                raise InputError(f"{path}:{number + 1}: not UTF-8 text") from None
            except OSError as exc:
                raise InputError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                raise InputError(f"{path}:{number}: line longer than {MAX_LINE_CHARS:,} characters "
                                 "(not a prompt file?)")
            yield number, line


def read_once(path: Path) -> Path | PromptText:
    """What to read the prompts of ``path`` from, each time they are needed: a regular file itself
    (read again for each pass, in constant memory); anything else (a pipe, /dev/stdin, <(...), a
    device) read now, once, whole, checked line by line and at most MAX_STREAM_CHARS long."""
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            return path
    except OSError:
        return path  # reading it names the problem (not found, a loop of links, ...)
    buffer, size = io.StringIO(), 0
    for _, line in _lines(path):
        size += len(line)
        if size > MAX_STREAM_CHARS:
            raise InputError(f"prompt file {path} is a pipe or device of more than {MAX_STREAM_CHARS:,} characters: "
                             "save it to a file (a file of any length is read in constant memory)")
        buffer.write(line)
    return PromptText(path, buffer.getvalue())


def iter_prompt_file(source: Path | PromptText, num_images: int) -> Iterator[PromptSpec]:
    """The prompts of a .txt or .jsonl file (or of what ``read_once`` read of one), one at a time
    (blank lines and '#' lines skipped): memory does not grow with the file. Each line is checked
    as it is read."""
    path = source.path if isinstance(source, PromptText) else source
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    for number, raw in _lines(source):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        yield _parse_jsonl_line(line, number, path, num_images) if jsonl else \
            PromptSpec(line, num_images, where=f"{path}:{number}")


def read_prompt_file(path: Path, num_images: int) -> list[PromptSpec]:
    """All prompts of a (small) prompt file; InputError if it has none."""
    specs = list(iter_prompt_file(path, num_images))
    if not specs:
        raise InputError(f"prompt file {path} has no prompts (only blank or # lines)")
    return specs
