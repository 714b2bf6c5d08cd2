"""Sampling with a layout: the tokens that name an object are attended from inside its box.

DenseDiffusion (Kim et al., ICCV 2023) lays out a scene without training by modulating the
cross-attention logits while the sampler runs: where a pixel lies inside an object's
region, its score for the tokens that name the object is raised, and outside lowered. The
conditional branch of classifier-free guidance then draws each object's features where its box is,
and guidance amplifies that against the unconditional branch, which has no layout. It costs no
extra forward pass: the bias is added inside the attention the U-Net computes anyway.

Here the bias is ``strength`` x (+1 inside, -1 outside) on the name's tokens, for every
cross-attention block, at the sampler's steps with sigma >= ``min_sigma``. The sampling pipeline
biases every step (``min_sigma`` 0): on the scorecard's pairs that placed both objects more often
than stopping at sigma 1 or 5 (docs/BENCHMARKS.md, "Pairs with a given layout").

The same bias can also train the U-Net (``train.layout_bias``, training/stages.py), so that it
learns to draw each object inside the box it is given instead of meeting the bias only here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffgen.data import Box
from diffgen.errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used: tasks and recipes need none of it
    import torch

    from diffgen.engine.guidance import Denoise
    from diffgen.training.grounding import GroundingTargets, TokenSpans

# The attention-logit bias that laid out the scorecard's pairs best with their regions given
# (benchmarks/layout_probe.py, docs/BENCHMARKS.md).
DEFAULT_STRENGTH = 6.0


@dataclass(frozen=True)
class Layout:
    """Where a prompt's objects go: (name, x0, y0, x1, y1) per object, the box in fractions of the
    image side (0, 0 is the top left), the name a phrase of the prompt; and the bias's strength."""

    places: tuple[tuple[str, float, float, float, float], ...]
    strength: float = DEFAULT_STRENGTH

    @classmethod
    def parse(cls, texts: Sequence[str], strength: float = DEFAULT_STRENGTH) -> Layout:
        """From ``NAME=X0,Y0,X1,Y1`` texts (the CLI's --place); InputError naming a bad one."""
        places = []
        for text in texts:
            name, _, numbers = text.rpartition("=")
            try:
                box = tuple(float(v) for v in numbers.split(","))
            except ValueError:
                box = ()
            if not name.strip() or len(box) != 4:
                raise InputError(f"--place {text!r}: expected NAME=X0,Y0,X1,Y1 (fractions of the image side), "
                                 "e.g. dog=0,0,0.5,1")
            places.append((name.strip(), *box))
        return cls(tuple(places), strength)  # type: ignore[arg-type]

    def validate(self, prompt: str) -> Layout:
        """This layout, checked against ``prompt``: every name in it, every box inside the image."""
        if not math.isfinite(self.strength) or self.strength < 0:
            raise InputError(f"layout strength must be a finite number >= 0, got {self.strength!r}")
        if not self.places:
            raise InputError("a layout needs at least one NAME=X0,Y0,X1,Y1 place")
        for name, x0, y0, x1, y1 in self.places:
            if not isinstance(name, str) or not name.strip():
                raise InputError(f"a placed name must be a word or phrase of the prompt, got {name!r}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (x0, y0, x1, y1)) \
                    or not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise InputError(f"the box of {name!r} must have 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, "
                                 f"got {x0}, {y0}, {x1}, {y1}")
            if name.lower() not in prompt.lower():
                raise InputError(f"the placed name {name!r} is not in the prompt {prompt!r}")
        return Layout(tuple((n, *(float(v) for v in b)) for n, *b in self.places),  # type: ignore[misc]
                      float(self.strength))

    def placements(self, prompt: str) -> list[Placement]:
        """Each place as the characters of ``prompt`` that name it (its first occurrence) and its box."""
        out = []
        for name, *box in self.places:
            start = prompt.lower().index(name.lower())
            out.append(Placement(start, start + len(name), tuple(box)))  # type: ignore[arg-type]
        return out

    @classmethod
    def from_recipe(cls, data: Any) -> Layout:
        """The layout stored in a PNG recipe (``asdict`` of one); InputError if it is damaged."""
        try:
            places = tuple(tuple(p) for p in data["places"])
            if any(len(p) != 5 for p in places):
                raise TypeError("each place is [name, x0, y0, x1, y1]")
            return cls(places, data["strength"])  # type: ignore[arg-type]
        except (KeyError, TypeError) as exc:
            raise InputError(f"the diffgen recipe has a damaged layout ({exc})") from None


@dataclass(frozen=True)
class Placement:
    """One named object of a prompt: the characters that name it (``prompt[start:end]``) and its
    box (x0, y0, x1, y1) as fractions of the image side."""

    start: int
    end: int
    box: Box


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
        import torch

        from diffgen.training.grounding import GroundingTargets

        rows, token_sets, boxes = [], [], []
        for row, (prompt, objects) in enumerate(zip(prompts, placements, strict=True)):
            for obj in objects:
                positions = spans.positions(prompt, obj.start, obj.end)
                if positions:
                    rows.append(row)
                    token_sets.append(positions)
                    boxes.append([obj.box])
        tokens = torch.zeros(len(rows), spans.context_length)
        for k, positions in enumerate(token_sets):
            tokens[k, positions] = 1.0
        return cls(GroundingTargets(torch.tensor(rows, dtype=torch.long), tokens, boxes), len(prompts), strength,
                   device)

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
    modules = unet.cross_attentions()
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
