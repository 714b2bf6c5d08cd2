"""A layout read from the prompt: the layout predictor's objects and boxes, for sampling.

When a prompt names two or more objects and no layout is given (``--place``), the sampler lays the
scene out with the boxes the model's layout predictor (engine/layout_net.py) reads from the prompt,
through the same attention bias as a given layout (sampling/layout.py). A prompt that names one
object or none is sampled exactly as without the predictor, and so is every prompt of a model
without one. The prompt is encoded alone, so its boxes do not depend on the prompts that share its
batch; where the predictor offers several layouts (either order of "a dog next to a cat"), the
image's seed draws one, so the same seed gives the same layout.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class PredictedLayout:
    """The objects a prompt names (its characters start:end), each one's box under every
    alternative layout, and how likely each layout is."""

    spans: tuple[tuple[int, int], ...]
    boxes: tuple[tuple[tuple[float, float, float, float], ...], ...]  # [layout][object]
    weights: tuple[float, ...]

    def placements(self, seed: int) -> list[Placement]:
        """The objects placed by the layout that ``seed`` draws (by the layouts' weights)."""
        draw, cumulative = random.Random(seed).random(), 0.0
        mode = len(self.weights) - 1  # where rounding leaves the sum of the weights below the draw
        for k, weight in enumerate(self.weights):
            cumulative += weight
            if draw < cumulative:
                mode = k
                break
        return [Placement(start, end, box) for (start, end), box in zip(self.spans, self.boxes[mode])]


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
    for word in _WORD.finditer(prompt):
        positions = spans.positions(prompt, word.start(), word.end())
        if not positions or float(probability[positions].mean()) <= OBJECT_PROBABILITY:
            follows = False
            continue
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
    return PredictedLayout(tuple((s, e) for s, e, _ in objects), per_layout, weights)
