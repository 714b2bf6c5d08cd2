"""A layout read from the prompt: the layout predictor's objects and boxes, for sampling.

When a prompt names two or more objects and no layout is given (``--place``), the sampler lays the
scene out with the boxes the model's layout predictor (engine/layout_net.py) reads from the prompt,
through the same attention bias as a given layout (sampling/layout.py). A prompt that names one
object or none is sampled exactly as without the predictor, and so is every prompt of a model
without one. The prompt is encoded alone, so its boxes do not depend on the prompts that share its
batch; where the predictor offers several layouts (either order of "a dog next to a cat"), the
image's seed draws one, so the same seed gives the same layout. A predictor trained with a spread
(``layout.spread``) also gives each object's spread about its box and the scene's shared spread: the
seed then draws the offsets too (after the layout, from the same generator), so each seed has its
own picture and still the same one every time; without a spread the boxes are the layout's own.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import torch

from diffgen.engine.layout_net import valid_positions
from diffgen.engine.model import DiffusionModel
from diffgen.engine.regions import Placement, TokenSpans

# A word names an object where its tokens' mean objectness is above this probability; adjacent
# such words name one object ("fire engine").
OBJECT_PROBABILITY = 0.5
MIN_OBJECTS = 2  # one object alone has no arrangement to get wrong: it is sampled as before
_WORD = re.compile(r"[\w'-]+")
Spread = tuple[float, float, float]  # standard deviations of centre x, centre y, log size


@dataclass(frozen=True)
class PredictedLayout:
    """The objects a prompt names (its characters start:end), each one's box under every
    alternative layout, and how likely each layout is."""

    spans: tuple[tuple[int, int], ...]
    boxes: tuple[tuple[tuple[float, float, float, float], ...], ...]  # [layout][object]
    weights: tuple[float, ...]
    # with a spread: standard deviations of (cx, cy, log size), [layout][object] and [layout]
    spreads: tuple[tuple[Spread, ...], ...] | None = None
    scene_spreads: tuple[Spread, ...] | None = None

    def placements(self, seed: int) -> list[Placement]:
        """The objects placed by the layout that ``seed`` draws (by the layouts' weights), each moved
        by the offsets the seed draws where the layout has a spread."""
        rng = random.Random(seed)
        draw, cumulative = rng.random(), 0.0
        mode = len(self.weights) - 1  # where rounding leaves the sum of the weights below the draw
        for k, weight in enumerate(self.weights):
            cumulative += weight
            if draw < cumulative:
                mode = k
                break
        boxes = self.boxes[mode]
        if self.spreads is not None and self.scene_spreads is not None:
            scene = [rng.gauss(0.0, 1.0) * s for s in self.scene_spreads[mode]]
            boxes = tuple(moved(box, [shared + rng.gauss(0.0, 1.0) * s for shared, s in zip(scene, own)])
                          for box, own in zip(boxes, self.spreads[mode]))
        return [Placement(start, end, box) for (start, end), box in zip(self.spans, boxes)]


def moved(box: tuple[float, float, float, float], offset: list[float]) -> tuple[float, float, float, float]:
    """``box`` with its centre shifted by offset[:2] and both sides scaled by exp(offset[2]), kept
    whole inside the image (shifted back in rather than cut, as the data's scenes keep their
    objects); with no offset, ``box`` itself."""
    if not any(offset):
        return box
    half = [min((box[2 + i] - box[i]) * math.exp(offset[2]), 1.0) / 2 for i in range(2)]
    centre = [min(max((box[i] + box[2 + i]) / 2 + offset[i], half[i]), 1 - half[i]) for i in range(2)]
    x0, y0, x1, y1 = centre[0] - half[0], centre[1] - half[1], centre[0] + half[0], centre[1] + half[1]
    return tuple(round(min(max(v, 0.0), 1.0), 4) for v in (x0, y0, x1, y1))  # type: ignore[return-value]


@torch.no_grad()
def predict_layout(model: DiffusionModel, prompt: str) -> PredictedLayout | None:
    """The layout the model's predictor reads from ``prompt``; None when it has no trained
    predictor, the prompt names fewer than MIN_OBJECTS objects, or uses prompt-weight syntax (its
    characters are not the tokens' then)."""
    from diffgen.engine.prompt_weights import has_weights
    from diffgen.sampling.tasks import has_layout_predictor

    if not has_layout_predictor(model) or has_weights(prompt):
        return None
    assert model.layout is not None  # has_layout_predictor saw it
    text = model.text_encoder
    encoding = text.encode([prompt])
    valid = valid_positions(encoding.num_tokens, text.context_length).to(encoding.tokens.device)
    guess = model.layout(encoding.tokens, valid)
    probability = guess.objectness[0].sigmoid().cpu()
    spans = TokenSpans(text.tokenizer, text.context_length)
    objects: list[tuple[int, int, list[int]]] = []
    follows = False  # whether the previous word named an object too
    # A predictor with a spread was trained on lists ("a penguin, tropical fish and an octopus"): a
    # comma between two object words ends the first object. The shipped predictor's reading is kept.
    lists = guess.spread is not None
    for word in _WORD.finditer(prompt):
        positions = spans.positions(prompt, word.start(), word.end())
        if not positions or float(probability[positions].mean()) <= OBJECT_PROBABILITY:
            follows = False
            continue
        if follows and lists and prompt[objects[-1][1]:word.start()].strip():
            follows = False
        if follows:
            start, _, joined = objects[-1]
            objects[-1] = (start, word.end(), joined + positions)
        else:
            objects.append((word.start(), word.end(), positions))
        follows = True
    if len(objects) < MIN_OBJECTS:
        return None
    boxes = guess.boxes[0].cpu()  # (K, L, 4)
    per_layout = tuple(tuple(tuple(round(v, 4) for v in boxes[k, positions].mean(0).tolist())
                             for _, _, positions in objects) for k in range(boxes.shape[0]))
    weights = tuple(guess.mode_logits[0].softmax(0).tolist())
    spreads = scene_spreads = None
    if guess.spread is not None and guess.scene_spread is not None:
        own = guess.spread[0].cpu()  # (K, L, 4)
        spreads = tuple(tuple(_rounded(own[k, positions].mean(0)) for _, _, positions in objects)
                        for k in range(own.shape[0]))
        scene_spreads = tuple(_rounded(row) for row in guess.scene_spread[0].cpu())
    return PredictedLayout(tuple((s, e) for s, e, _ in objects), per_layout, weights, spreads, scene_spreads)


def _rounded(values: torch.Tensor) -> Spread:
    return tuple(round(v, 4) for v in values.tolist())
