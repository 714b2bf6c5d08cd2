"""A user's layout: named objects of a prompt and their boxes (the CLI's --place, a prompt file's
"places", a recipe's "layout"), parsed and checked; engine/layout_bias.py turns it into the
attention bias that draws each object in its box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffgen.engine.regions import Placement
from diffgen.errors import InputError

# The attention-logit bias that laid out the scorecard's pairs best with their regions given
# (benchmarks/probes/layout_probe.py, docs/BENCHMARKS.md).
DEFAULT_LAYOUT_STRENGTH = 6.0
# A logit bias of 100 already weighs a name's tokens e^100 times more inside its box: more changes
# nothing but can overflow (in float32 a strength near 3.4e38 is infinite, and the image black).
MAX_LAYOUT_STRENGTH = 100.0


@dataclass(frozen=True)
class Layout:
    """Where a prompt's objects go: (name, x0, y0, x1, y1) per object, the box in fractions of the
    image side (0, 0 is the top left), the name a phrase of the prompt; and the bias's strength."""

    places: tuple[tuple[str, float, float, float, float], ...]
    strength: float = DEFAULT_LAYOUT_STRENGTH

    @classmethod
    def parse(cls, texts: Sequence[str], strength: float = DEFAULT_LAYOUT_STRENGTH) -> Layout:
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
        return cls(tuple(places), strength)

    def validate(self, prompt: str) -> Layout:
        """This layout, checked against ``prompt``: every name in it, every box inside the image."""
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                or not 0 <= self.strength <= MAX_LAYOUT_STRENGTH:
            raise InputError(f"layout strength must be a number from 0 to {MAX_LAYOUT_STRENGTH:g}, "
                             f"got {self.strength!r}")
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
            out.append(Placement(start, start + len(name), (box[0], box[1], box[2], box[3])))
        return out

    @classmethod
    def from_recipe(cls, data: Any) -> Layout:
        """The layout stored in a PNG recipe (``asdict`` of one); InputError if it is damaged."""
        try:
            places = tuple(tuple(p) for p in data["places"])
            if any(len(p) != 5 for p in places):
                raise TypeError("each place is [name, x0, y0, x1, y1]")
            return cls(places, data["strength"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"the diffgen recipe has a damaged layout ({exc})") from None
