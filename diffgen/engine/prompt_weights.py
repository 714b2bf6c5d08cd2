"""Prompt weights in AUTOMATIC1111's syntax: ``(word)`` x1.1, ``((word))`` x1.21, ``[word]`` /1.1,
``(word:1.4)`` x1.4, nesting multiplies, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters.

The prompt is split into chunks of text with a weight each; the text encoder tokenizes the chunks
(the brackets are not tokens), encodes the whole sequence as usual, then scales each token's state
by its weight and restores the sequence's mean, as A1111 does for Stable Diffusion 1.x. A prompt
without weights (or with all weights 1) encodes exactly as the plain text.
"""

from __future__ import annotations

import re

ROUND, SQUARE = 1.1, 1 / 1.1
# one lexical element: an escape, a bracket, a ":number)" weight close, plain text, or a lone colon
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:")


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] with neighbouring chunks of equal weight merged; [("", 1.0)] when empty.

    Unbalanced brackets are forgiven the way A1111 forgives them: an unclosed one still weights
    everything after it, a stray closing one is read as text.
    """
    chunks: list[list] = []  # [text, weight]
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for chunk in chunks[start:]:
            chunk[1] *= factor

    for match in _TOKEN.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\") and len(text) == 2:
            chunks.append([text[1], 1.0])
        elif text == "(":
            round_open.append(len(chunks))
        elif text == "[":
            square_open.append(len(chunks))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif text == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif text == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        elif weight is not None:  # ":1.2)" with no "(" open: the colon is text, the ")" too
            chunks.append([text, 1.0])
        else:
            chunks.append([text, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    merged: list[tuple[str, float]] = []
    for text, weight in chunks:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]


def has_weights(prompt: str) -> bool:
    """Whether the prompt uses the syntax at all (a plain prompt takes the unweighted path)."""
    return any(c in prompt for c in "()[]\\")
