"""OpenAI's images API: ``POST /v1/images/generations`` (prompt, n, size, response_format b64_json).

The official ``openai`` client's ``client.images.generate(prompt=..., response_format="b64_json")``
works against it. ``model`` names a model of the catalog (none: the selected one). diffgen's own
settings may ride along (the client's ``extra_body``): seed, steps, guidance, negative_prompt,
sampler, schedule. Errors have OpenAI's shape, ``{"error": {"message": ..., "type": ...}}``.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

from diffgen.errors import InputError
from diffgen.sampling.settings import DEFAULT_BATCH_SIZE, DEFAULTS, SamplingSettings
from diffgen.serve.catalog import Catalog
from diffgen.serve.generation import Generation, checked_generation
from diffgen.serve.worker import Finished

MAX_N = 10  # OpenAI's own limit for n
# Fields OpenAI's API defines that tune its own models: accepted and ignored.
IGNORED = frozenset({"user", "quality", "style", "moderation"})
EXTENSIONS = frozenset({"seed", "steps", "guidance", "negative_prompt", "sampler", "schedule"})
KNOWN = frozenset({"prompt", "n", "size", "response_format", "model", "output_format", "background"})


def generation_of(data: dict[str, Any], selected: str, catalog: Catalog) -> Generation:
    """The Generation of an images/generations body; InputError naming the field."""
    unknown = sorted(set(data) - KNOWN - IGNORED - EXTENSIONS)
    if unknown:
        takes = ", ".join(sorted(KNOWN | EXTENSIONS))
        raise InputError(f"unknown field {unknown[0][:60]!r} (this server takes {takes})")
    if data.get("response_format", "b64_json") not in ("b64_json", None):
        raise InputError("only response_format 'b64_json' is supported (the server keeps no files to link to)")
    if data.get("output_format", "png") not in ("png", None):
        raise InputError("only output_format 'png' is supported (the PNG carries the image's recipe)")
    if data.get("background", "auto") not in ("auto", "opaque", None):
        raise InputError("only background 'auto' or 'opaque' is supported")
    n = 1 if data.get("n") is None else data["n"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InputError(f"n must be a whole number from 1 to {MAX_N}, got {n!r}"[:200])
    model = catalog.entry(data.get("model") or selected).name
    settings = SamplingSettings(data.get("steps", DEFAULTS.steps), data.get("sampler", DEFAULTS.sampler),
                                data.get("schedule", DEFAULTS.schedule), data.get("guidance", DEFAULTS.guidance),
                                data.get("negative_prompt", DEFAULTS.negative))
    return checked_generation(model, data.get("prompt"), n, batch_size=min(n, DEFAULT_BATCH_SIZE),
                              seed=data.get("seed"), settings=settings, size=size_of(data.get("size")), name=str)


def size_of(value: object) -> tuple[int, int] | None:
    """``"WxH"`` as (W, H); None for "auto" or no size."""
    if value is None or value == "auto":
        return None
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", value) if isinstance(value, str) else None
    if match is None:
        raise InputError(f"size must be WIDTHxHEIGHT (e.g. 128x128) or auto, got {str(value)[:40]!r}")
    return int(match[1]), int(match[2])


def response(done: Finished) -> dict[str, Any]:
    """OpenAI's answer: ``{"created": unix time, "data": [{"b64_json": ..., "revised_prompt": ...}]}``."""
    return {"created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": recipe["prompt"]}
                     for png, recipe in zip(done.pngs, done.recipes)]}


def error_body(message: str, status: int) -> dict[str, Any]:
    """OpenAI's error shape, which its client reads the message from."""
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
