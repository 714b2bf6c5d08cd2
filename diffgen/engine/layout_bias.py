"""The layout bias: the tokens that name an object are attended from inside its box.

DenseDiffusion (Kim et al., ICCV 2023) lays out a scene without training by modulating the
cross-attention logits while the sampler runs: where a pixel lies inside an object's
region, its score for the tokens that name the object is raised, and outside lowered. The
conditional branch of classifier-free guidance then draws each object's features where its box is,
and guidance amplifies that against the unconditional branch, which has no layout. It costs no
extra forward pass: the bias is added inside the attention the U-Net computes anyway.

Here the bias is ``strength`` x (+1 inside, -1 outside) on the name's tokens, for every
cross-attention block, at the sampler's steps with sigma >= ``min_sigma``. The sampling pipeline
(sampling/generate.py) biases every step (``min_sigma`` 0): on the scorecard's pairs that placed
both objects more often than stopping at sigma 1 or 5 (docs/BENCHMARKS.md, "Pairs with a given
layout"). The same bias can also train the U-Net (``train.layout_bias``, training/stages.py), so
that it learns to draw each object inside the box it is given instead of meeting the bias only at
sampling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import cast

import torch

from diffgen.engine.guidance import Denoise
from diffgen.engine.regions import GroundingTargets, Placement, TokenSpans
from diffgen.engine.unet import UNet


class LayoutBias:
    """The attention-logit bias of a batch's named objects and their boxes (``targets``, rows of
    ``images`` images; an image with no target is left alone)."""

    def __init__(self, targets: GroundingTargets, images: int, strength: float, device: torch.device):
        self.targets, self.images, self.strength, self.device = targets, images, strength, device
        self.active = False
        self._bias: dict[tuple[int, int], torch.Tensor] = {}  # by (batch, positions), built once

    @classmethod
    def of(cls, prompts: Sequence[str], placements: Sequence[Sequence[Placement]], spans: TokenSpans,
           strength: float, device: torch.device) -> LayoutBias:
        """The bias of ``prompts`` with their placements (one list per image; an empty list leaves
        that image alone)."""
        named = [(row, prompt, obj.start, obj.end, [obj.box])
                 for row, (prompt, objects) in enumerate(zip(prompts, placements, strict=True)) for obj in objects]
        return cls(GroundingTargets.of(named, spans), len(prompts), strength, device)

    def __call__(self, batch: int, positions: int) -> torch.Tensor | None:
        """(batch, 1, positions, L) for a block's attention, or None while inactive. The batch may
        be the images' or longer (guidance's unconditional rows, training's extra rows, after the
        images: those get no bias)."""
        if not self.active or not len(self.targets):
            return None
        import torch

        if (batch, positions) not in self._bias:  # every step asks for the same ones
            side = int(positions**0.5)
            signs = 2 * self.targets.masks(side) - 1  # (S, N): +1 inside the box, -1 outside
            rows = self.targets.rows.to(signs.device)
            owner = torch.nn.functional.one_hot(rows, self.images).to(signs.dtype)  # (S, B)
            bias = torch.einsum("sb,sn,sl->bnl", owner, signs, self.targets.tokens.to(signs.device)) * self.strength
            bias = torch.cat([bias, bias.new_zeros((batch - bias.shape[0], *bias.shape[1:]))])
            self._bias[(batch, positions)] = bias[:, None].to(self.device)
        return self._bias[(batch, positions)]


@contextlib.contextmanager
def attention_biased(unet: torch.nn.Module, bias: LayoutBias) -> Iterator[LayoutBias]:
    """Within the block every cross-attention of ``unet`` adds ``bias`` (while it is active); on
    leaving it the attention is plain again and the bias inactive."""
    modules = cast(UNet, unet).cross_attentions()
    for module in modules:
        module.logit_bias = bias
    try:
        yield bias
    finally:
        for module in modules:
            module.logit_bias = None
        bias.active = False


@contextlib.contextmanager
def laid_out(unet: torch.nn.Module, denoise: Denoise, bias: LayoutBias, min_sigma: float = 0.0
             ) -> Iterator[Denoise]:
    """Within the block, ``denoise`` with the layout's bias in every cross-attention of ``unet`` at
    noise levels of at least ``min_sigma``; on leaving it the attention is plain again."""

    def biased(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        bias.active = float(sigma.max()) >= min_sigma
        return denoise(x, sigma)

    with attention_biased(unet, bias):
        yield biased
