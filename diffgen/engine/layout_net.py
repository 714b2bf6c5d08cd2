"""The layout predictor: which words of a prompt name objects, and where each object goes.

Sampling with a layout (sampling/layout.py) draws each named object inside its box when it is told
the boxes. This network supplies them from the prompt alone. It reads the frozen text encoder's
per-token states through a small bidirectional transformer (CLIP's causal mask keeps "dog" in "a
dog to the left of a cat" from seeing "left"), then says for each token whether it names an object
(objectness) and, for each of ``modes`` alternative layouts of the whole scene, that object's box.
Several layouts because some prompts leave the arrangement open: "a dog next to a cat" is drawn in
either order, and one box regressed to both answers would put both objects in the middle. Training
(training/layout_stage.py) pulls the closest layout towards the data's (winner takes all, relaxed,
after multiple-choice learning, Guzman-Rivera et al. 2012) and teaches how often each one wins.

With ``spread`` (config ``layout.spread``) each layout is a distribution rather than one set of
boxes, so that each image's seed draws its own picture: the data places the same caption's
objects at many scales and shifts, and a predictor of one box per object gives every seed the
same scene. Per layout, each object's centre and log-size (cx, cy, log sqrt(w h)) is Gaussian
around the predicted box (one size: an object keeps its shape, as the data scales a sprite and
never stretches it), with a standard deviation of its own (per object) plus one shared by the
whole scene (per coordinate): offset_i = scene + own_i. The shared part is how the data varies
(emoji/scenes.py and groups.py scale and shift a whole arrangement), and it moves the objects
together, so a wide spread does not push them into each other the way independent offsets would.
Per coordinate the objects' offsets are jointly Gaussian with covariance diag(own^2) + scene^2 11^T,
whose negative log-likelihood has a closed form (``spread_nll``). It is taken on the winning layout
with its boxes detached: the boxes learn exactly as without the spread, and the spread learns how
far the data's boxes lie from them. More modes alone would give a few fixed pictures per prompt;
a spread gives every seed its own, at the cost of two small linear heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from diffgen.engine.regions import Region, boxes_by_name

# The share of the box loss that the layouts other than the closest one still get, so that none
# is left untrained (a layout that never wins would never move).
RELAXED_SHARE = 0.05
# The smallest standard deviation of the spread (a fraction of the side, or of log-size): a caption
# whose data always puts its objects at the same spots would otherwise drive the likelihood to
# infinity. A third of a pixel at 64 px.
MIN_SPREAD = 0.005
# The spread's share of the layout loss, beside the box loss's scale (a mean L1 over four coordinates)
SPREAD_WEIGHT = 0.1
SPREAD_COORDINATES = 3  # centre x, centre y, log size


@dataclass(frozen=True)
class LayoutGuess:
    """The predictor's output for a batch of prompts (L token positions, K layouts)."""

    objectness: torch.Tensor  # (B, L) logit that the token names an object
    boxes: torch.Tensor  # (B, K, L, 4) x0, y0, x1, y1 in [0, 1] per layout and token
    mode_logits: torch.Tensor  # (B, K) how likely each layout is
    # with layout.spread: standard deviations of (cx, cy, log size), each object's own and the scene's
    spread: torch.Tensor | None = None  # (B, K, L, 3)
    scene_spread: torch.Tensor | None = None  # (B, K, 3)


class LayoutPredictor(nn.Module):
    """Token states (B, L, D) and which positions hold tokens (B, L) -> LayoutGuess."""

    trained_steps: torch.Tensor  # a buffer

    def __init__(self, token_dim: int, context_length: int, width: int, layers: int, heads: int, modes: int,
                 spread: bool = False):
        super().__init__()
        self.modes = modes
        self.proj = nn.Linear(token_dim, width)
        # normal_ in place: arithmetic on a meta tensor (load_model's shape check) would import torch._dynamo
        self.position = nn.Parameter(nn.init.normal_(torch.empty(context_length, width), std=0.02))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.objectness = nn.Linear(width, 1)
        self.boxes = nn.Linear(width, 4 * modes)
        self.mode_logits = nn.Linear(width, modes)
        # only with a spread, so that a predictor without one has the tensors it always had
        self.spread = nn.Linear(width, SPREAD_COORDINATES * modes) if spread else None
        self.scene_spread = nn.Linear(width, SPREAD_COORDINATES * modes) if spread else None
        # the layout stage's steps so far: sampling uses a predictor only once it has been trained
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> LayoutGuess:
        b, length, _ = tokens.shape
        h = self.proj(tokens.float()) + self.position[:length]
        h = self.norm(self.blocks(h, src_key_padding_mask=~valid))
        raw = self.boxes(h).view(b, length, self.modes, 4).permute(0, 2, 1, 3)
        centre, size = raw[..., :2].sigmoid(), raw[..., 2:].sigmoid()
        boxes = torch.cat([(centre - size / 2).clamp(0, 1), (centre + size / 2).clamp(0, 1)], dim=-1)
        weights = valid.float()[:, :, None]
        pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1)
        spread = scene_spread = None
        if self.spread is not None and self.scene_spread is not None:
            own = self.spread(h).view(b, length, self.modes, SPREAD_COORDINATES).permute(0, 2, 1, 3)
            spread = MIN_SPREAD + F.softplus(own)
            scene_spread = F.softplus(self.scene_spread(pooled).view(b, self.modes, SPREAD_COORDINATES))
        return LayoutGuess(self.objectness(h).squeeze(-1), boxes, self.mode_logits(pooled), spread, scene_spread)


def valid_positions(num_tokens: Sequence[int], context_length: int) -> torch.Tensor:
    """(B, L) True at the positions that hold a prompt's tokens (start and end markers included)."""
    counts = torch.tensor([min(n, context_length) for n in num_tokens])
    return torch.arange(context_length)[None, :] < counts[:, None]


@dataclass(frozen=True)
class LayoutTargets:
    """What a batch of captions says: which tokens name an object, and that object's box (the box
    around all of its drawings: "three apples" names one region that holds three)."""

    objectness: torch.Tensor  # (B, L) 1 at an object's tokens
    boxes: torch.Tensor  # (B, L, 4)
    valid: torch.Tensor  # (B, L)

    @classmethod
    def of(cls, captions: Sequence[str], regions: Sequence[Sequence[Region]], spans, num_tokens: Sequence[int],
           context_length: int) -> LayoutTargets:
        """From each caption's regions (start, end, x0, y0, x1, y1); ``spans`` is a
        training/grounding.TokenSpans that maps a caption's characters to token positions."""
        objectness = torch.zeros(len(captions), context_length)
        boxes = torch.zeros(len(captions), context_length, 4)
        for row, (caption, caption_regions) in enumerate(zip(captions, regions, strict=True)):
            for (start, end), name_boxes in boxes_by_name(caption_regions).items():
                positions = spans.positions(caption, start, end)
                x0s, y0s, x1s, y1s = zip(*name_boxes)
                objectness[row, positions] = 1.0
                boxes[row, positions] = torch.tensor([min(x0s), min(y0s), max(x1s), max(y1s)])
        return cls(objectness, boxes, valid_positions(num_tokens, context_length))

    def to(self, device: torch.device) -> LayoutTargets:
        return LayoutTargets(self.objectness.to(device), self.boxes.to(device), self.valid.to(device))


def layout_loss(guess: LayoutGuess, targets: LayoutTargets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, parts): binary cross-entropy of objectness over the prompts' tokens; for the boxes,
    per caption the mean L1 error over its object tokens of each layout, the closest layout taking
    1 - RELAXED_SHARE of the weight; and cross-entropy that says which layout was closest."""
    valid = targets.valid
    objectness = F.binary_cross_entropy_with_logits(guess.objectness[valid], targets.objectness[valid])
    named = targets.objectness > 0  # (B, L)
    error = (guess.boxes - targets.boxes[:, None]).abs().sum(-1)  # (B, K, L)
    per_layout = (error * named[:, None]).sum(-1) / named.sum(-1).clamp_min(1)[:, None]  # (B, K)
    has_objects = named.any(-1)
    modes = per_layout.shape[1]
    winner = per_layout.detach().argmin(1)
    if modes == 1:
        weights = torch.ones_like(per_layout)
    else:
        weights = torch.full_like(per_layout, RELAXED_SHARE / (modes - 1))
        weights.scatter_(1, winner[:, None], 1 - RELAXED_SHARE)
    zero = objectness.new_zeros(())
    box = (per_layout * weights).sum(1)[has_objects].mean() if has_objects.any() else zero
    mode = F.cross_entropy(guess.mode_logits[has_objects], winner[has_objects]) \
        if has_objects.any() and modes > 1 else zero
    parts = {"objectness": objectness, "boxes": box, "modes": mode}
    total = objectness + box + mode
    if guess.spread is not None and guess.scene_spread is not None:
        rows = torch.arange(len(winner), device=winner.device)
        nll = spread_nll(box_coordinates(guess.boxes[rows, winner].detach()), box_coordinates(targets.boxes),
                         guess.spread[rows, winner], guess.scene_spread[rows, winner], named)
        parts["spread"] = nll[has_objects].mean() if has_objects.any() else zero
        total = total + SPREAD_WEIGHT * parts["spread"]
    return total, parts


def box_coordinates(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes x0, y0, x1, y1 -> (..., 3) centre and log-size (cx, cy, log sqrt(w h)), where
    the spread is Gaussian (a size grows or shrinks by a factor: its logarithm goes either way)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = (boxes[..., 2:] - boxes[..., :2]).clamp_min(1e-3)
    return torch.cat([centre, size.log().mean(-1, keepdim=True)], dim=-1)


def spread_nll(mean: torch.Tensor, target: torch.Tensor, own: torch.Tensor, scene: torch.Tensor,
               named: torch.Tensor) -> torch.Tensor:
    """(B,) the negative log-likelihood per named token and coordinate of ``target`` (B, L, C) under
    the objects' joint Gaussian about ``mean`` (B, L, C): per coordinate, covariance
    diag(own^2) + scene^2 11^T over the ``named`` (B, L) tokens, with ``own`` (B, L, C) and ``scene``
    (B, C) standard deviations. The matrix determinant lemma and Sherman-Morrison give it in closed form."""
    mask = named.float()[..., None]  # (B, L, 1)
    precision = mask / own.square()  # 1 / own^2 at the named tokens, 0 elsewhere
    r = (target - mean) * mask
    total_precision = precision.sum(1)  # (B, C)
    shared = 1 + scene.square() * total_precision  # (B, C)
    log_det = (mask * own.square().log()).sum(1) + shared.log()
    quadratic = (r.square() * precision).sum(1) - scene.square() * (r * precision).sum(1).square() / shared
    count = mask.sum(1)  # (B, 1): named tokens per caption
    nll = 0.5 * (log_det + quadratic + count * math.log(2 * math.pi))  # (B, C)
    return nll.sum(-1) / (mean.shape[-1] * count.squeeze(-1)).clamp_min(1)
