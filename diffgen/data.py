"""Captioned-image folders: discovery, linting, preprocessing and the in-memory training set.

A folder (searched recursively) holds images (png, jpg/jpeg, webp, bmp) with captions either in a
same-name ``.txt`` file (one caption per line; one is drawn at random each time the image is used)
or in a ``metadata.jsonl`` with ``file_name`` and ``text`` (the Hugging Face imagefolder layout).
Bad files are reported by name and skipped, never silently trained on.

A metadata row may also carry ``negative_text`` (captions the image is not, for the caption
contrast) and ``regions``: one list per caption of ``[start, end, x0, y0, x1, y1]`` entries, the
characters of the caption that name an object and the object's box as fractions of the (square)
image side, for training's grounding loss (``train.grounding_weight``).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from diffgen.config import TextConfig
from diffgen.engine.regions import Region
from diffgen.errors import InputError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
METADATA_NAME = "metadata.jsonl"


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    captions: tuple[str, ...]
    # captions that do not describe the image (metadata.jsonl "negative_text"), e.g. its objects
    # named in the other places; used by training's caption contrast (train.negative_weight)
    negatives: tuple[str, ...] = ()
    # caption -> where its named objects are (metadata.jsonl "regions"; see the module docstring)
    regions: dict[str, tuple[Region, ...]] = field(default_factory=dict)


def parse_regions(caption: str, entries: object) -> tuple[Region, ...] | None:
    """A caption's regions from JSON, or None when they do not fit it (wrong shape, a span outside
    the caption, an empty or out-of-image box)."""
    if not isinstance(entries, list):
        return None
    out = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 6
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry)):
            return None
        start, end, x0, y0, x1, y1 = entry
        if not (int(start) == start and int(end) == end and 0 <= start < end <= len(caption)
                and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            return None
        out.append((int(start), int(end), float(x0), float(y0), float(x1), float(y1)))
    return tuple(out)


@dataclass
class Metadata:
    """What the metadata.jsonl files of a folder say, keyed by resolved image path."""

    captions: dict[Path, list[str]] = field(default_factory=dict)
    negatives: dict[Path, list[str]] = field(default_factory=dict)
    regions: dict[Path, dict[str, tuple[Region, ...]]] = field(default_factory=dict)


@dataclass
class DataReport:
    """What a folder holds: usable pairs, skipped files with reasons, and warnings."""

    root: Path
    items: list[CaptionedImage] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)
    long_captions: list[tuple[Path, int]] = field(default_factory=list)
    context_length: int = TextConfig.context_length  # what the captions were measured against

    def summary_lines(self, image_size: int | None = None) -> list[str]:
        """Human-readable lines: counts, size statistics, problems."""
        lines = [f"{len(self.items)} usable image-caption pairs in {self.root}",
                 f"{len(self.skipped)} file(s) skipped"]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        if self.sizes:
            widths, heights = zip(*self.sizes)
            lines.append(f"image sizes: width {min(widths)}-{max(widths)} (median "
                         f"{statistics.median(widths):g}), height {min(heights)}-{max(heights)} "
                         f"(median {statistics.median(heights):g})")
            if image_size:
                small = sum(min(s) < image_size for s in self.sizes)
                if small:
                    lines.append(f"{small} image(s) smaller than {image_size} px will be upscaled")
        num_captions = sum(len(i.captions) for i in self.items)
        distinct = len({c for i in self.items for c in i.captions})
        lines.append(f"{num_captions} captions ({distinct} distinct)")
        with_negatives = sum(bool(i.negatives) for i in self.items)
        if with_negatives:
            lines.append(f"{with_negatives} image(s) with negative captions (for train.negative_weight)")
        with_regions = sum(bool(i.regions) for i in self.items)
        if with_regions:
            lines.append(f"{with_regions} image(s) with object regions (for train.grounding_weight)")
        for group in self.duplicates:
            lines.append("duplicate images: " + ", ".join(str(p) for p in group))
        for path, count in self.long_captions:
            lines.append(f"caption of {path} has {count} tokens; the text context keeps {self.context_length}")
        lines += self.warnings
        return lines


def _not_a_file(path: Path) -> str:
    """Why a path found in a data folder cannot be read as a file, in words."""
    if path.is_symlink() and not path.exists():
        return "a link that does not resolve (dangling, or a loop of links)"
    return "a folder" if path.is_dir() else "not a regular file"


def _read_metadata(folder: Path, report: DataReport) -> Metadata:
    """Captions, negative captions and regions from every metadata.jsonl under ``folder``."""
    found = Metadata()
    captions, negatives = found.captions, found.negatives
    root = folder.resolve()
    for meta in sorted(p for p in folder.rglob("*") if p.name == METADATA_NAME):
        if not meta.is_file():  # resolve() fails on a loop of links, and a FIFO would block
            report.warnings.append(f"{meta}: {_not_a_file(meta)}; ignored")
            continue
        if not meta.resolve().is_relative_to(root):
            report.warnings.append(f"{meta}: links outside {folder}; ignored")
            continue
        for number, raw in enumerate(meta.read_bytes().splitlines(), 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                report.warnings.append(f"{meta}:{number}: not UTF-8 text; ignored")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, text = row["file_name"], row["text"]
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError):  # nesting too deep: not ours
                report.warnings.append(f"{meta}:{number}: not an object with file_name and text; ignored")
                continue
            texts = [text] if isinstance(text, str) else text
            if not isinstance(name, str) or not isinstance(texts, list):
                report.warnings.append(f"{meta}:{number}: file_name/text have the wrong type; ignored")
                continue
            path = (meta.parent / name).resolve()
            if not path.is_relative_to(root):
                report.warnings.append(f"{meta}:{number}: {name} is outside {folder}; ignored")
                continue
            captions.setdefault(path, []).extend(t.strip() for t in texts if isinstance(t, str))
            if "regions" in row:
                regions = row["regions"]
                fits = (isinstance(regions, list) and len(regions) == len(texts)
                        and all(isinstance(t, str) and t == t.strip() for t in texts))
                parsed = [parse_regions(t, r) for t, r in zip(texts, regions)] if fits else [None]
                if any(p is None for p in parsed):
                    report.warnings.append(f"{meta}:{number}: regions do not fit the captions; ignored")
                else:
                    found.regions.setdefault(path, {}).update(zip(texts, parsed))  # type: ignore[arg-type]
            negative = row.get("negative_text", [])
            negative = [negative] if isinstance(negative, str) else negative
            if not isinstance(negative, list):
                report.warnings.append(f"{meta}:{number}: negative_text is not a string or a list; ignored")
                continue
            negatives.setdefault(path, []).extend(t.strip() for t in negative if isinstance(t, str) and t.strip())
    return found


# The longest side of an image diffgen reads may be at most this many times its shortest. Every
# image is scaled to the model's square by its shorter side, and an image far taller than wide
# would be scaled into gigabytes (a 1 x 40,000,000 strip at 64 px: 64 x 2.56e9) before the crop.
MAX_ASPECT_RATIO = 16


def shape_problem(width: int, height: int) -> str | None:
    """Why an image of this shape cannot be used (too elongated), or None."""
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return (f"image too elongated ({width} x {height}; the longer side may be at most "
                f"{MAX_ASPECT_RATIO} times the shorter)")
    return None


def check_image(path: Path) -> tuple[int, int] | str:
    """The image's size, or the reason it cannot be used: unreadable, truncated, over Pillow's
    megapixel limit or too elongated (MAX_ASPECT_RATIO). The one check of every image diffgen
    reads (data folders, --init-image and --mask, recipes, ``diffgen noise`` and ``upscale``)."""
    import struct
    import warnings

    try:
        with warnings.catch_warnings():
            # Pillow warns (on stderr, past -q) between its limit and twice it, and raises above:
            # either way the image is too large to be a training image; say so in one line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                problem = shape_problem(*image.size)  # from the header, before decoding
                if problem is not None:
                    return problem
                image.load()  # decodes every byte: catches truncated files
                return image.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return f"image too large (over {(Image.MAX_IMAGE_PIXELS or 0) // 1_000_000} megapixels)"
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        return f"unreadable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def scan_folder(folder: Path, context_length: int = TextConfig.context_length, check_tokens: bool = True
                ) -> DataReport:
    """Find image-caption pairs under ``folder`` and everything wrong with the rest."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"data folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"data path is not a folder: {folder}")
    report = DataReport(folder)
    meta = _read_metadata(folder, report)
    hashes: dict[str, list[Path]] = {}
    root = folder.resolve()
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()):
        if not path.is_file():  # a dangling link, a loop of links, a FIFO: named, never silently dropped
            report.skipped.append((path, _not_a_file(path)))
            continue
        # One rule for links: a file whose real location is outside the folder is not part of it.
        if not path.resolve().is_relative_to(root):
            report.skipped.append((path, f"a link to {path.resolve()}, outside the data folder"))
            continue
        txt = path.with_suffix(".txt")
        if txt.is_symlink() and not txt.exists():
            report.skipped.append((path, f"its caption {txt.name} is {_not_a_file(txt)}"))
            continue
        if txt.is_file():
            if not txt.resolve().is_relative_to(root):
                report.skipped.append((path, f"its caption {txt.name} links outside the data folder"))
                continue
            try:
                captions = [c.strip() for c in txt.read_text(encoding="utf-8").splitlines()]
            except UnicodeDecodeError:
                report.skipped.append((path, f"caption {txt.name} is not UTF-8 text (save it as UTF-8)"))
                continue
        elif path.resolve() in meta.captions:
            captions = meta.captions[path.resolve()]
        else:
            report.skipped.append((path, "no caption (.txt file or metadata.jsonl entry)"))
            continue
        captions = [c for c in captions if c]
        if not captions:
            report.skipped.append((path, "empty caption"))
            continue
        checked = check_image(path)
        if isinstance(checked, str):
            report.skipped.append((path, checked))
            continue
        report.sizes.append(checked)
        negatives = () if txt.is_file() else tuple(
            n for n in meta.negatives.get(path.resolve(), ()) if n not in captions)  # never its own
        # boxes are fractions of a square image: a centre crop would move them
        regions = {} if txt.is_file() or checked[0] != checked[1] else {
            c: r for c, r in meta.regions.get(path.resolve(), {}).items() if c in captions}
        report.items.append(CaptionedImage(path, tuple(captions), negatives, regions))
        hashes.setdefault(hashlib.sha1(path.read_bytes()).hexdigest(), []).append(path)
    report.duplicates = [group for group in hashes.values() if len(group) > 1]
    if check_tokens and report.items:
        from diffgen.engine.clip_text import simple_tokenizer

        tokenizer = simple_tokenizer(context_length)
        report.context_length = context_length
        for item in report.items:
            longest = max(len(tokenizer.encode(c)) + 2 for c in item.captions)
            if longest > context_length:
                report.long_captions.append((item.path, longest))
    return report


def load_image(path: Path, size: int, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB image of ``size`` x ``size``: transparency composited onto ``background``, grayscale and
    palette images converted, the shorter side resized to ``size`` and the centre cropped."""
    with Image.open(path) as opened:
        problem = shape_problem(*opened.size)  # check_image refused it; a file changed since is refused too
        if problem is not None:
            raise InputError(f"{path}: {problem}")
        opened.load()
        picture: Image.Image = opened
        if opened.mode in ("RGBA", "LA", "PA") or (opened.mode == "P" and "transparency" in opened.info):
            rgba = opened.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, background + (255,))
            picture = Image.alpha_composite(canvas, rgba)
        image = picture.convert("RGB")
    width, height = image.size
    if width == height == size:
        return image
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                           Image.Resampling.LANCZOS)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


@dataclass
class TrainingSet:
    """Images preprocessed once to the model resolution and kept in memory as uint8."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    captions: list[tuple[str, ...]]
    paths: list[Path]
    negatives: list[tuple[str, ...]] | None = None  # per image, where the data names any
    regions: list[dict[str, tuple[Region, ...]]] | None = None  # per image, where the data has any
    # the upscaling stage's images at twice the size (N2, 3, 2S, 2S) uint8, and the index of each
    # among the images: only those at least that large on their shorter side (never enlarged)
    images_2x: torch.Tensor | None = None
    indices_2x: list[int] = field(default_factory=list)

    def negatives_of(self, index: int) -> tuple[str, ...]:
        """The negative captions of image ``index`` (none for most data)."""
        return self.negatives[index] if self.negatives else ()

    def regions_of(self, index: int, caption: str) -> tuple[Region, ...]:
        """Where the objects ``caption`` names are in image ``index`` (none where unknown)."""
        return self.regions[index].get(caption, ()) if self.regions else ()

    def __len__(self) -> int:
        return len(self.captions)


def load_training_set(items: list[CaptionedImage], size: int) -> TrainingSet:
    """Decode, composite, resize and crop every image once (uint8, N x 3 x size x size)."""
    import numpy as np
    import torch

    arrays = [np.asarray(load_image(item.path, size), dtype=np.uint8) for item in items]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    negatives = [item.negatives for item in items]
    regions = [item.regions for item in items]
    return TrainingSet(images, [item.captions for item in items], [item.path for item in items],
                       negatives if any(negatives) else None, regions if any(regions) else None)


def load_images_2x(data: TrainingSet, items: list[CaptionedImage], sizes: list[tuple[int, int]],
                   size: int) -> list[CaptionedImage]:
    """Give ``data`` its images at ``2 * size`` for the upscaling stage: those whose shorter side is
    at least that (a smaller one would be enlarged, and an upscaler must not learn enlargement's
    blur as the truth). Returns the items left out."""
    import numpy as np
    import torch

    large = [i for i, (w, h) in enumerate(sizes) if min(w, h) >= 2 * size]
    if large:
        arrays = [np.asarray(load_image(items[i].path, 2 * size), dtype=np.uint8) for i in large]
        data.images_2x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    data.indices_2x = large
    kept = set(large)
    return [item for i, item in enumerate(items) if i not in kept]


def split_holdout(num_items: int, seed: int, fraction: float = 0.1, cap: int = 500) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a seeded random ``fraction`` (at most ``cap``) is held out of
    training so retrieval and image-distance metrics see images the model never saw."""
    import torch

    held = min(cap, int(num_items * fraction)) if num_items >= 20 else 0
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[held:]), sorted(order[:held])


def split_fingerprint(folder: Path, paths: list[Path], held_idx: list[int]) -> dict:
    """Image count, held-out count and a SHA-256 of the held-out files' names (relative to
    ``folder``): stored with a trained model so that ``diffgen eval`` can check it scores the
    images the model never saw."""
    import hashlib

    names = sorted(str(paths[i].relative_to(folder)) if paths[i].is_relative_to(folder) else str(paths[i])
                   for i in held_idx)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return {"images": len(paths), "held_out": len(held_idx), "held_out_sha256": digest}
