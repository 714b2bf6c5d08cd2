"""Two-object scenes made from an adapter's own pictures: the new word learned as one of two objects.

An adapter taught only on "a kangaroo" draws a good kangaroo alone, but in "a kangaroo to the
left of a cat" the word is one of two names, its object is half the size and the layout bias
(engine/layout_bias.py) steers it into a box: there the word was never trained, and the kangaroo
came out as a smudge (docs/BENCHMARKS.md, "Adapters"). So a share of each batch is made into
scenes like the ones the prompts ask for: the picture shrunk into the box that the model's layout
predictor reads from a two-object caption ("a kangaroo above a dog", "a car to the left of a
kangaroo", ...), on its own background colour, trained under that caption with the same layout
bias that sampling applies. The other object has no picture, so the loss leaves its box out:
the adapter learns where and how big the new thing goes, and nothing about the other object,
whose drawing the base model keeps (the prior term of adapter_stage.py guards it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from diffgen.engine.model import DiffusionModel
from diffgen.engine.regions import Box, Placement

# Everyday subjects the default model draws well, as the other object of a scene.
OTHERS = ("a cat", "a dog", "a car", "a house", "a tree", "a flower", "a bird", "an apple", "a star",
          "a fish", "a ball", "a heart")
# {new}: the taught word with its article; {other}: one of OTHERS.
RELATIONS = ("{new} to the left of {other}", "{other} to the left of {new}", "{new} above {other}",
             "{other} above {new}", "{new} next to {other}", "{other} next to {new}")
# Where the predictor names no two objects (a model without one, or a word it does not take for an
# object): the halves that "left of" and "above" give on the default model, roughly.
FALLBACK = {"left of": ((0.05, 0.3, 0.45, 0.7), (0.55, 0.3, 0.95, 0.7)),
            "above": ((0.3, 0.08, 0.7, 0.45), (0.3, 0.55, 0.7, 0.92))}


def with_article(word: str) -> str:
    """'a kangaroo', 'an otter'."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


@dataclass
class Scene:
    """One made scene: its caption, both objects' placements (for the layout bias) and the boxes of
    the new thing and of the other object."""

    caption: str
    placements: list[Placement]
    new_box: Box
    other_box: Box


@dataclass
class SceneMaker:
    """Makes two-object scenes for ``trigger`` from a batch of the folder's pictures.

    The captions' layouts are read once each from ``model``'s layout predictor (its first layout,
    the most likely), so a run's scenes are fixed by its captions; which caption and which picture
    is drawn from the step's generator, so a resumed run makes the same scenes.
    """

    model: DiffusionModel
    trigger: str
    _scenes: dict[tuple[str, str], Scene] = field(default_factory=dict)

    def options(self) -> list[tuple[str, str]]:
        """Every (relation, other object) a scene may take."""
        return [(relation, other) for relation in RELATIONS for other in OTHERS]

    def scene(self, relation: str, other: str) -> Scene:
        """The scene of ``relation`` with ``other``: its caption and both objects' boxes."""
        if (relation, other) not in self._scenes:
            self._scenes[(relation, other)] = self._read(relation, other)
        return self._scenes[(relation, other)]

    def _read(self, relation: str, other: str) -> Scene:
        from diffgen.sampling.predicted_layout import predict_layout

        new = with_article(self.trigger)
        caption = relation.format(new=new, other=other)
        other_name = other.split(" ", 1)[1]
        # every relation starts with one object and ends with the other: their characters follow
        new_first = relation.startswith("{new}")
        new_end = len(new) if new_first else len(caption)
        other_end = len(caption) if new_first else len(other)
        new_span = (new_end - len(self.trigger), new_end)
        other_span = (other_end - len(other_name), other_end)
        layout = predict_layout(self.model, caption)
        if layout is not None and set(layout.spans) == {new_span, other_span}:
            boxes = dict(zip(layout.spans, layout.boxes[0]))
            new_box, other_box = boxes[new_span], boxes[other_span]
        else:  # the predictor did not find the two names: the relation's usual halves
            first, second = FALLBACK["above" if " above " in relation else "left of"]
            new_box, other_box = (first, second) if new_first else (second, first)
        return Scene(caption, [Placement(*new_span, new_box), Placement(*other_span, other_box)], new_box, other_box)

    def make(self, images: torch.Tensor, gen: torch.Generator
             ) -> tuple[torch.Tensor, list[str], torch.Tensor, list[list[Placement]]]:
        """Scenes from ``images`` (B, C, H, W in [-1, 1]): the scene images, their captions, the
        loss masks (B, 1, H, W: 0 in the other object's box) and their placements."""
        options = self.options()
        out, captions, masks, placements = [], [], [], []
        for image in images:
            scene = self.scene(*options[int(torch.randint(len(options), (1,), generator=gen))])
            canvas, mask = compose(image, scene.new_box, scene.other_box)
            out.append(canvas)
            masks.append(mask)
            captions.append(scene.caption)
            placements.append(scene.placements)
        return torch.stack(out), captions, torch.stack(masks), placements


def compose(image: torch.Tensor, box: Box, other: Box) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` (C, H, W)'s foreground fitted into ``box`` (keeping its shape, centred) on the
    image's own border colour; and the loss mask (1, H, W), 0 inside ``other``."""
    _, h, w = image.shape
    border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
    colour = border.median(dim=1).values[:, None, None]
    canvas = colour.expand_as(image).clone()
    top, bottom, left, right = foreground(image, colour)
    thing = image[:, top:bottom, left:right]
    x0, y0, x1, y1 = box
    scale = min((x1 - x0) * w / thing.shape[2], (y1 - y0) * h / thing.shape[1])
    sw, sh = max(1, min(w, round(thing.shape[2] * scale))), max(1, min(h, round(thing.shape[1] * scale)))
    left = min(max(0, round((x0 + x1) / 2 * w - sw / 2)), w - sw)
    top = min(max(0, round((y0 + y1) / 2 * h - sh / 2)), h - sh)
    small = F.interpolate(thing[None].float(), size=(sh, sw), mode="bilinear", antialias=True,
                          align_corners=False)[0]
    canvas[:, top:top + sh, left:left + sw] = small.to(canvas.dtype)
    mask = torch.ones(1, h, w, dtype=image.dtype, device=image.device)
    ox0, oy0, ox1, oy1 = (round(v * s) for v, s in zip(other, (w, h, w, h)))
    mask[:, oy0:oy1, ox0:ox1] = 0
    return canvas, mask


def foreground(image: torch.Tensor, colour: torch.Tensor, tolerance: float = 0.1) -> tuple[int, int, int, int]:
    """The rows top:bottom and columns left:right of the pixels that differ from the background
    ``colour`` by more than ``tolerance`` (in [-1, 1] units); the whole image when none do (a
    picture without a plain background keeps its frame)."""
    differs = (image - colour).abs().amax(dim=0) > tolerance
    rows, cols = differs.any(dim=1).nonzero(), differs.any(dim=0).nonzero()
    if not len(rows):
        return 0, image.shape[1], 0, image.shape[2]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def masked_loss(x0_hat: torch.Tensor, x0: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """lambda(sigma) x the mean squared error over each image's mask, shape (B,)."""
    err = (x0_hat.float() - x0.float()) ** 2 * mask
    return weight.flatten() * err.sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * x0.shape[1]).clamp(min=1)


def scene_rows(batch: int, share: float, gen: torch.Generator) -> Sequence[int]:
    """Which rows of a batch become scenes: each with probability ``share``."""
    if share <= 0:
        return []
    draws = torch.rand(batch, generator=gen)
    return [i for i in range(batch) if float(draws[i]) < share]
