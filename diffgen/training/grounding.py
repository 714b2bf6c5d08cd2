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

import torch

from diffgen.data import TrainingSet
from diffgen.engine.regions import GroundingTargets, TokenSpans, boxes_by_name
from diffgen.engine.unet import Attention


def grounding_targets(data: TrainingSet, indices: Sequence[int], captions: Sequence[str], spans: TokenSpans,
                      device: torch.device) -> GroundingTargets:
    """Targets for the batch images ``indices`` under their drawn ``captions`` (empty ones:
    dropped for guidance, nothing named)."""
    named = [(row, caption, start, end, name_boxes)
             for row, (i, caption) in enumerate(zip(indices, captions)) if caption
             for (start, end), name_boxes in boxes_by_name(data.regions_of(i, caption)).items()]
    return GroundingTargets.of(named, spans, device)


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
def kept_attention(modules: Sequence[Attention], enabled: bool = True) -> Iterator[list[torch.Tensor]]:
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
