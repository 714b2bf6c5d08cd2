"""Where a caption's objects are, in the terms the U-Net's cross-attention uses.

A box is (x0, y0, x1, y1) in fractions of the image side; a region names a box by the characters
of a caption that spell the object (metadata.jsonl "regions", see data.py); token spans turn those
characters into positions of the text encoder's context; grounding targets are a batch's named
objects as token rows and box masks at any attention resolution. Training's grounding loss
(training/grounding.py), the layout bias (engine/layout_bias.py) and the layout predictor
(engine/layout_net.py) all read these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the data and recipe readers use the types without loading torch
    import torch

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image side
Region = tuple[int, int, float, float, float, float]  # a caption's characters start:end, then its Box


def boxes_by_name(regions: Sequence[Region]) -> dict[tuple[int, int], list[Box]]:
    """A caption's regions grouped by the characters that name them: a name drawn several times
    ("three apples") has several boxes."""
    named: dict[tuple[int, int], list[Box]] = {}
    for start, end, *box in regions:
        named.setdefault((start, end), []).append((box[0], box[1], box[2], box[3]))
    return named


@dataclass(frozen=True)
class Placement:
    """One named object of a prompt: the characters that name it (``prompt[start:end]``) and its
    box (x0, y0, x1, y1) as fractions of the image side."""

    start: int
    end: int
    box: Box


class TokenSpans:
    """Caption characters -> token positions in the text encoder's context (0 holds the start
    token), with open_clip's tokenizer: the BPE works word by word, so the tokens of a caption's
    prefix are the first tokens of the caption."""

    def __init__(self, tokenizer: Any, context_length: int):
        self.tokenizer, self.context_length = tokenizer, context_length
        self._count = lru_cache(maxsize=1 << 16)(lambda text: len(self.tokenizer.encode(text)))

    def positions(self, caption: str, start: int, end: int) -> list[int]:
        """Positions of the tokens that spell ``caption[start:end]`` (those that fit the context)."""
        first, last = 1 + self._count(caption[:start]), 1 + self._count(caption[:end])
        return [p for p in range(first, last) if p < self.context_length - 1]


@dataclass
class GroundingTargets:
    """The named objects of a batch: one row per (image, name), with its token positions and the
    boxes it covers (a name drawn several times, "three apples", has several)."""

    rows: torch.Tensor  # (S,) batch row of each name
    tokens: torch.Tensor  # (S, L) 1 at the name's token positions
    boxes: list[list[Box]]
    _masks: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # by side, built once

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def of(cls, named: Sequence[tuple[int, str, int, int, list[Box]]], spans: TokenSpans,
           device: torch.device | None = None) -> GroundingTargets:
        """Targets from ``(batch row, caption, start, end, boxes)`` per named object; a name whose
        tokens fall outside the context is left out."""
        import torch

        rows, token_sets, boxes = [], [], []
        for row, caption, start, end, name_boxes in named:
            positions = spans.positions(caption, start, end)
            if positions:
                rows.append(row)
                token_sets.append(positions)
                boxes.append(name_boxes)
        tokens = torch.zeros(len(rows), spans.context_length)
        for k, positions in enumerate(token_sets):
            tokens[k, positions] = 1.0
        return cls(torch.tensor(rows, dtype=torch.long, device=device), tokens.to(device), boxes)

    def masks(self, side: int) -> torch.Tensor:
        """(S, side * side) 1 where a pixel's centre lies in one of the name's boxes (at least the
        pixel under each box's centre, so a box smaller than a pixel still has one)."""
        import torch

        if side in self._masks:  # every block at this resolution asks for the same masks
            return self._masks[side]
        out = torch.zeros(len(self.boxes), side, side)
        centres = (torch.arange(side) + 0.5) / side
        for k, name_boxes in enumerate(self.boxes):
            for x0, y0, x1, y1 in name_boxes:
                inside_y = (centres >= y0) & (centres < y1)
                inside_x = (centres >= x0) & (centres < x1)
                out[k] += inside_y[:, None] & inside_x[None, :]
                cy, cx = min(int((y0 + y1) / 2 * side), side - 1), min(int((x0 + x1) / 2 * side), side - 1)
                out[k, cy, cx] = 1.0
        self._masks[side] = out.clamp_(max=1.0).flatten(1).to(self.rows.device)
        return self._masks[side]
