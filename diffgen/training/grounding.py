"""The grounding loss: each object's name attends to the place where the object is drawn.

TokenCompose (Wang et al., CVPR 2024) supervises a text-to-image U-Net's cross-attention with the
objects' masks: for the tokens that name an object, the share of their attention that falls inside
the object's region should be 1, and the loss is (1 - share)^2. Here the regions are the boxes the
data composer pasted each sprite into (metadata.jsonl "regions", see data.py), and the loss is
averaged over every cross-attention block (16 and 8 px for the default U-Net) and its heads.

Why: the denoising loss teaches which objects a caption names, but barely which one goes where
(the order of "A to the left of B" moves the loss by well under 1%), while this term asks directly
for the binding of words to places that a two-object prompt needs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from diffgen.data import Box, TrainingSet, boxes_by_name


class TokenSpans:
    """Caption characters -> token positions in the text encoder's context (0 holds the start
    token), with open_clip's tokenizer: the BPE works word by word, so the tokens of a caption's
    prefix are the first tokens of the caption."""

    def __init__(self, tokenizer, context_length: int):
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
    def of(cls, data: TrainingSet, indices: Sequence[int], captions: Sequence[str], spans: TokenSpans,
           device: torch.device) -> GroundingTargets:
        """Targets for the batch images ``indices`` under their drawn ``captions`` (empty ones:
        dropped for guidance, nothing named)."""
        rows, token_sets, boxes = [], [], []
        for row, (i, caption) in enumerate(zip(indices, captions)):
            for (start, end), name_boxes in boxes_by_name(data.regions_of(i, caption) if caption else ()).items():
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


def inside_shares(block: torch.Tensor, targets: GroundingTargets) -> torch.Tensor:
    """(S,) the share of each name's attention, averaged over heads, that comes from inside its
    boxes; ``block`` is one block's cross-attention weights (B, heads, H*W, L) of a square map."""
    side = math.isqrt(block.shape[2])
    weights = block[targets.rows].float().mean(dim=1)  # (S, H*W, L)
    name_map = torch.einsum("snl,sl->sn", weights, targets.tokens)  # attention to the name per pixel
    return (name_map * targets.masks(side)).sum(1) / name_map.sum(1).clamp_min(1e-12)


def grounding_loss(probs: Sequence[torch.Tensor], targets: GroundingTargets) -> torch.Tensor:
    """Mean over blocks and names of (1 - share of the name's attention inside its boxes)^2;
    ``probs`` are cross-attention weights (B, heads, H*W, L) of square feature maps."""
    total = probs[0].new_zeros((), dtype=torch.float32)
    if not len(targets):
        return total
    for block in probs:
        total = total + (1 - inside_shares(block, targets)).square().mean()
    return total / len(probs)


@contextlib.contextmanager
def kept_attention(modules: Sequence[nn.Module], enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """Within the block the attention modules keep their weights; on leaving it the returned list
    holds each module's weights of its last call, in order, and the modules let them go."""
    kept: list[torch.Tensor] = []
    for module in modules:
        module.keep_probs = enabled
    try:
        yield kept
        if enabled:
            kept.extend(module.probs for module in modules if module.probs is not None)
    finally:
        for module in modules:
            module.keep_probs, module.probs = False, None
