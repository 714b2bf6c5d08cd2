"""Prompt weights in AUTOMATIC1111's syntax: ``(word)`` x1.1, ``((word))`` x1.21, ``[word]`` /1.1,
``(word:1.4)`` x1.4, nesting multiplies, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters.

The prompt is split into chunks of text with a weight each; the text encoder tokenizes the chunks
(the brackets are not tokens), encodes the whole sequence as usual, then scales each token's state
by its weight and restores the sequence's mean, as A1111 does for Stable Diffusion 1.x. A prompt
without weights (or with all weights 1) encodes exactly as the plain text.
"""

from __future__ import annotations

import re

from diffgen.errors import InputError

ROUND, SQUARE = 1.1, 1 / 1.1
# A weight of 100 already drowns every other word of the prompt; far larger ones overflow float32 in
# the text encoder ((word:1e39), or a thousand nested brackets: 1.1^1000) and gave all-black images.
MAX_WEIGHT = 100.0
# Brackets open at once (both kinds, unclosed ones included). Each closing bracket re-weights the text
# inside it, so a parse costs at most (chunks of text x this): linear in the prompt's length. Without
# a bound 120 kB of nested brackets took 97 s, and a recipe of a megabyte hours.
MAX_DEPTH = 32
# one lexical element: an escape, a bracket, a ":number)" weight close, plain text, or a lone colon
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:")


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] with neighbouring chunks of equal weight merged; [("", 1.0)] when empty.

    Unbalanced brackets are forgiven the way A1111 forgives them: an unclosed one still weights
    everything after it, a stray closing one is read as text. InputError for brackets nested more
    than MAX_DEPTH deep, or a weight of text outside [-MAX_WEIGHT, MAX_WEIGHT].
    """
    texts: list[list[str]] = []  # each chunk's pieces of text
    weights: list[float] = []  # each chunk's weight, multiplied in the order its brackets close
    round_open: list[int] = []
    square_open: list[int] = []
    joins = False  # text goes on the last chunk: no bracket since, so the same brackets weight both

    def add(text: str) -> None:
        nonlocal joins
        if joins:
            texts[-1].append(text)
        else:
            texts.append([text])
            weights.append(1.0)
        joins = True

    def scale(start: int, factor: float) -> None:
        weights[start:] = [weight * factor for weight in weights[start:]]

    for match in _TOKEN.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\") and len(text) == 2:
            add(text[1])
            continue
        if text == "(" or text == "[":
            if len(round_open) + len(square_open) >= MAX_DEPTH:
                raise InputError(f"more than {MAX_DEPTH} brackets open at once; write \\( or \\[ for a bracket "
                                 "meant as text")
            (round_open if text == "(" else square_open).append(len(texts))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif text == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif text == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:  # text; also ":1.2)" with no "(" open: the colon is text, the ")" too
            add(text)
            continue
        joins = False
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    merged: list[tuple[str, float]] = []
    start = 0  # each run of equal weights joined at once (adding chunk by chunk copied the text each time)
    for end in range(1, len(texts) + 1):
        if end == len(texts) or weights[end] != weights[start]:
            merged.append(("".join("".join(pieces) for pieces in texts[start:end]), weights[start]))
            start = end
    for text, weight in merged:
        if not abs(weight) <= MAX_WEIGHT and text.strip():  # not <=: NaN (inf x 0) is refused too
            raise InputError(f"{text.strip()[:40]!r} is weighted {weight:g}, but weights go from -{MAX_WEIGHT:g} "
                             f"to {MAX_WEIGHT:g} (nested brackets multiply: ((word)) is 1.21)")
    return merged or [("", 1.0)]


def check_weights(prompt: str) -> None:
    """InputError if ``prompt``'s weight syntax cannot be used (see ``parse_weights``)."""
    if has_weights(prompt):
        parse_weights(prompt)


def has_weights(prompt: str) -> bool:
    """Whether the prompt uses the syntax at all (a plain prompt takes the unweighted path)."""
    return any(c in prompt for c in "()[]\\")
