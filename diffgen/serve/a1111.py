"""AUTOMATIC1111's web UI API, the subset its clients use: field names and response shapes.

``POST /sdapi/v1/txt2img`` and ``/img2img`` answer ``{"images": [base64 PNG], "parameters":
{the request}, "info": "<JSON text>"}``; the PNGs carry diffgen's recipe and A1111's
``parameters`` text. Clients such as the ``webuiapi`` package send every field of the web UI with
its default; the features diffgen does not have (hires. fix, face restoration, tiling, styles,
variation seeds, scripts) are accepted at their off values and refused with one message otherwise.
Fields that only tune those features are ignored (listed in docs/SERVE.md).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from diffgen import __version__
from diffgen.errors import InputError
from diffgen.sampling.images import a1111_parameters, image_filename
from diffgen.sampling.settings import A1111_SAMPLER_LABELS, DEFAULTS, SAMPLER_NAMES, SCHEDULE_NAMES, SamplingSettings
from diffgen.serve.catalog import Catalog
from diffgen.serve.generation import Generation, checked_generation
from diffgen.serve.worker import Finished

# What a diffgen name is called in AUTOMATIC1111's request, for error messages.
FIELD_NAMES = {"steps": "steps", "guidance": "cfg_scale", "sampler": "sampler_name", "schedule": "scheduler",
               "negative": "negative_prompt", "seed": "seed", "strength": "denoising_strength",
               "mask_blur": "mask_blur", "init_image": "init_images", "mask": "mask", "prompt": "prompt",
               "count": "batch_size x n_iter", "batch_size": "batch_size"}
# The web UI's features diffgen does not have, and the values that leave them off.
OFF_VALUES: dict[str, tuple[Any, ...]] = {
    "enable_hr": (False, None), "restore_faces": (False, None), "tiling": (False, None), "styles": ([], None),
    "subseed_strength": (0, None), "script_name": (None, ""), "script_args": ([], None),
    "alwayson_scripts": ({}, None), "save_images": (False, None), "include_init_images": (False, None),
    "eta": (None, 1), "s_noise": (None, 1), "image_cfg_scale": (None, 1.5), "initial_noise_multiplier": (None, 1),
}
# The schedules by AUTOMATIC1111's scheduler names ("automatic": the CLI's default).
SCHEDULER_LABELS = {"karras": "Karras", "exponential": "Exponential", "vp": "VP"}


def a1111_name(name: str) -> str:
    return FIELD_NAMES.get(name, name)


def json_body(body: bytes) -> dict[str, Any]:
    """The request's JSON object; InputError for anything else."""
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
        raise InputError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InputError("the request body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{key} must be text, got {value!r}"[:200])
    return value


def _value(data: dict[str, Any], key: str, default: Any) -> Any:
    """The value (checked where it is used); None means the default, as in the web UI."""
    value = data.get(key)
    return default if value is None else value


def schedule_name(text: str | None) -> str:
    """The schedule for an A1111 scheduler name ("automatic" or none: the default)."""
    if text is None or text.strip().lower() in ("", "automatic"):
        return DEFAULTS.schedule
    key = text.strip().lower()
    if key not in SCHEDULE_NAMES:
        raise InputError(f"unknown scheduler '{text[:100]}' (choose from: automatic, {', '.join(SCHEDULE_NAMES)})")
    return key


def model_choice(data: dict[str, Any], selected: str) -> str:
    """The model a request names in ``override_settings`` (the only override taken), else ``selected``."""
    overrides = data.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise InputError("override_settings must be an object")
    unknown = sorted(set(overrides) - {"sd_model_checkpoint"})
    if unknown:
        raise InputError(f"override_settings takes only sd_model_checkpoint, not {', '.join(unknown)}"[:300])
    return overrides.get("sd_model_checkpoint") or selected


def generation_of(data: dict[str, Any], selected: str, catalog: Catalog, inputs: Path,
                  edit: bool) -> Generation:
    """The Generation of a txt2img (or, ``edit``, img2img) body; InputError naming A1111's field."""
    from diffgen.serve.uploads import kept, saved_picture

    for key, allowed in OFF_VALUES.items():
        if key in data and data[key] not in allowed:
            raise InputError(f"{key} is not supported by diffgen serve (leave it at {allowed[0]!r})")
    model = catalog.entry(model_choice(data, selected)).name
    sampler = _text(data, "sampler_name") or _text(data, "sampler_index") or DEFAULTS.sampler
    settings = SamplingSettings(_value(data, "steps", DEFAULTS.steps), sampler,
                                schedule_name(_text(data, "scheduler")), _value(data, "cfg_scale", DEFAULTS.guidance),
                                _text(data, "negative_prompt", "") or "")
    batch_size, n_iter = _value(data, "batch_size", 1), _value(data, "n_iter", 1)
    for key, value in (("batch_size", batch_size), ("n_iter", n_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{key} must be a whole number of at least 1, got {value!r}"[:200])
    seed = _value(data, "seed", -1)
    width, height = data.get("width"), data.get("height")
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in (width, height)):
        raise InputError("width and height must be whole numbers")
    size = None if width is None and height is None else (width or 0, height or 0)
    init_image = mask = strength = None
    mask_blur = 0
    if edit:
        images = data.get("init_images")
        if not isinstance(images, list) or len(images) != 1:
            raise InputError("init_images must be a list of one base64 image")
        init_image = saved_picture(images[0], inputs, "init_images[0]")
        strength = _value(data, "denoising_strength", 0.75)
        if data.get("mask") is not None:
            mask = saved_picture(data["mask"], inputs, "mask")
            if data.get("inpainting_mask_invert") not in (None, 0, 1, False, True):
                raise InputError("inpainting_mask_invert must be 0 or 1")
            if data.get("inpainting_mask_invert"):
                mask = kept(_inverted(mask), inputs, "mask")
            mask_blur = _value(data, "mask_blur", 0)  # the web UI uses it with a mask only
    return checked_generation(model, data.get("prompt"), batch_size * n_iter, batch_size=batch_size,
                              seed=None if seed == -1 else seed, settings=settings, init_image=init_image,
                              strength=strength, mask=mask, mask_blur=mask_blur, size=size, name=a1111_name)


def _inverted(path: Path) -> bytes:
    """The mask with black and white swapped, as PNG bytes (A1111's inpainting_mask_invert)."""
    from PIL import Image, ImageOps

    buffer = io.BytesIO()
    with Image.open(path) as mask:
        ImageOps.invert(mask.convert("L")).save(buffer, format="PNG")
    return buffer.getvalue()


def response(data: dict[str, Any], done: Finished) -> dict[str, Any]:
    """The web UI's answer: base64 PNGs, the request's parameters (without its pictures), and
    ``info`` as JSON text."""
    import base64

    job = done.generation
    recipes = done.recipes
    settings = job.settings
    parameters = {k: v for k, v in data.items() if k not in ("init_images", "mask")}
    first = recipes[0] if recipes else {}
    info = {
        "prompt": job.prompt, "all_prompts": [r["prompt"] for r in recipes],
        "negative_prompt": settings.negative, "all_negative_prompts": [r["negative"] for r in recipes],
        "seed": job.seed, "all_seeds": [r["seed"] for r in recipes], "subseed": -1,
        "all_subseeds": [-1] * len(recipes), "subseed_strength": 0,
        "width": first.get("width"), "height": first.get("height"),
        "sampler_name": A1111_SAMPLER_LABELS.get(settings.sampler, settings.sampler),
        "scheduler": SCHEDULER_LABELS.get(settings.schedule, settings.schedule), "cfg_scale": settings.guidance,
        "steps": settings.steps, "batch_size": job.batch_size, "n_iter": -(-job.count // job.batch_size),
        "restore_faces": False, "sd_model_name": done.model_name, "sd_model_hash": done.model_sha256[:10],
        "denoising_strength": job.strength if job.init_image is not None else None,
        "index_of_first_image": 0, "infotexts": [a1111_parameters(r) for r in recipes], "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1, "interrupted": done.cut_short,
        "version": f"diffgen {__version__}",
        # diffgen's own: each image's recipe (also in its PNG) and the file name the CLI would give it
        "diffgen_recipes": recipes, "filenames": [image_filename(r["index"], r["seed"], r["prompt"]) for r in recipes],
    }
    images = [base64.b64encode(png).decode("ascii") for png in done.pngs] if data.get("send_images", True) else []
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


def sd_models(catalog: Catalog) -> list[dict[str, Any]]:
    """``GET /sdapi/v1/sd-models``: each checkpoint by name and hash (no paths)."""
    return [{"title": e.title, "model_name": e.name, "hash": e.sha256[:10], "sha256": e.sha256,
             "filename": f"{e.name}.safetensors", "config": None} for e in catalog.entries()]


def samplers() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers``: A1111's names, diffgen's as aliases."""
    return [{"name": A1111_SAMPLER_LABELS[name], "aliases": [name], "options": {}} for name in SAMPLER_NAMES]


def schedulers() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/schedulers``: "automatic" (the default, karras) and each schedule."""
    return [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
            *({"name": name, "label": SCHEDULER_LABELS[name], "aliases": None,
               "default_rho": 7.0 if name == "karras" else -1, "need_inner_model": False} for name in SCHEDULE_NAMES)]


def progress(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``GET /sdapi/v1/progress`` from the worker's snapshot: the fraction done and the seconds left."""
    total, done = snapshot["steps_total"], snapshot["steps_done"]
    fraction = done / total if total else 0.0
    elapsed = time.time() - snapshot["started"] if snapshot["job"] else 0.0
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    return {"progress": round(fraction, 4), "eta_relative": round(eta, 2),
            "state": {"skipped": False, "interrupted": snapshot["interrupted"], "stopping_generation": False,
                      "job": snapshot["job"], "job_count": snapshot["job_count"],
                      "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(snapshot["started"]))
                      if snapshot["job"] else "0", "job_no": 0, "sampling_step": done, "sampling_steps": total},
            "current_image": None, "textinfo": None}

