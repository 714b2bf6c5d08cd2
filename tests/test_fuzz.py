"""Property-based fuzzing of the two parsers that take untrusted text: prompt files (.txt, .jsonl)
and PNG recipes. Any input gives either a valid plan or an InputError (the CLI's one line and exit
code 2), never another exception. `make fuzz` runs many more examples (HYPOTHESIS_PROFILE=fuzz)."""

from __future__ import annotations

import itertools
import json
import os
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from diffgen.errors import InputError
from diffgen.sampling.images import read_recipe
from diffgen.sampling.plan import plan_sample
from diffgen.sampling.request import SampleRequest
from diffgen.sampling.settings import DEFAULTS
from diffgen.sampling.tasks import placement_of, task_from_recipe

settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

KEYS = ["prompt", "negative", "n", "seed", "steps", "guidance", "sampler", "schedule", "index", "edit", "extra"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
    | st.sampled_from(["euler", "DPM++ 2M", "karras", "a cat", ""]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6)
objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)
jsonl_lines = st.one_of(objects.map(json.dumps), st.text(max_size=60),
                        st.sampled_from(["", "# comment", "{", "[]", "null", '{"prompt": "a cat", "n": 1e400}']))


def plan_from(path: Path) -> None:
    """Plan a run from the file and take its first tasks; InputError is the only allowed failure."""
    try:
        plan = plan_sample([], path, None, 2, SampleRequest(DEFAULTS, 0))
        first = list(itertools.islice(plan.tasks(), 3))
        assert first and plan.count >= len(first) and plan.total_steps >= 1
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)


@given(st.lists(jsonl_lines, max_size=6))
def test_any_jsonl_prompt_file_plans_or_is_one_input_error(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "p.jsonl")
        path.write_text("\n".join(lines), encoding="utf-8")
        plan_from(path)


@given(st.binary(max_size=300) | st.text(alphabet=string.printable + "é\u2028\x00", max_size=200)
       .map(lambda t: t.encode("utf-8")))
def test_any_txt_prompt_file_plans_or_is_one_input_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "p.txt")
        path.write_bytes(data)
        plan_from(path)


@given(st.one_of(objects, json_values).map(json.dumps) | st.text(max_size=80))
def test_any_png_recipe_replays_or_is_one_input_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "r.png")
        info = PngImagePlugin.PngInfo()
        info.add_text("diffgen", text)
        Image.new("RGB", (4, 4)).save(path, pnginfo=info)
        try:
            recipe = read_recipe(path)
            task = task_from_recipe(recipe)
            placement_of(recipe)
            assert task.steps >= 1 and task.seed >= 0
        except InputError as exc:
            assert str(exc) and "\n" not in str(exc)



# --- the newer surface: prompt weights, layouts, whole recipes, config files ----------------------
# Fewer examples each than the parsers above (make test stays fast); HYPOTHESIS_PROFILE=fuzz runs more.
FEW = settings(max_examples=max(40, settings.default.max_examples // 4))
HUGE = "9" * 40  # finite as a Python float, infinite in float32

weight_prompts = st.lists(st.sampled_from(["(", ")", "[", "]", "\\", "\\(", "\\]", ":", ":1.5)", ":0)", ":-3)",
                                           ": .5 )", f":{HUGE})", f":{'9' * 400})", ":1e39)", "cat", " a ",
                                           "((", "))", "é"]), max_size=80).map("".join)


@FEW
@given(weight_prompts)
def test_any_weighted_prompt_parses_to_bounded_weights_or_is_one_input_error(prompt):
    from diffgen.engine.prompt_weights import MAX_WEIGHT, parse_weights

    try:
        chunks = parse_weights(prompt)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert chunks and all(isinstance(text, str) for text, _ in chunks)
    assert all(abs(weight) <= MAX_WEIGHT for text, weight in chunks if text.strip())  # float32 holds them all
    assert all(a[1] != b[1] for a, b in zip(chunks, chunks[1:]))  # neighbours of equal weight are merged


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.just(1e39))
place_texts = st.lists(
    st.tuples(st.sampled_from(["cat", "dog", "", " ", "a=b", "é"]), st.lists(numbers | st.sampled_from(["x", ""]),
                                                                              max_size=5))
    .map(lambda p: f"{p[0]}=" + ",".join(str(v) for v in p[1])) | st.text(max_size=20), max_size=3)


@FEW
@given(place_texts, numbers, st.sampled_from(["a cat and a dog", "a cat", "", "A DOG=CAT"]))
def test_any_place_texts_make_a_checked_layout_or_one_input_error(texts, strength, prompt):
    from diffgen.sampling.layout import MAX_LAYOUT_STRENGTH
    from diffgen.sampling.request import layout_of

    try:
        layout = layout_of(texts, strength)
        checked = layout.validate(prompt) if layout is not None else None
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    if checked is not None:
        assert 0 <= checked.strength <= MAX_LAYOUT_STRENGTH
        assert all(0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 for _, x0, y0, x1, y1 in checked.places)
        assert len(checked.placements(prompt)) == len(checked.places)


def _or_junk(strategy):
    return strategy | json_values


recipe_fields = {
    "index": _or_junk(st.integers(-1, 2**70)), "seed": _or_junk(st.integers(-1, 2**64)),
    "prompt": _or_junk(st.sampled_from(["a cat", "(a cat:2)", f"(cat:{HUGE})", "(" * 40 + "cat"])),
    "negative": _or_junk(st.sampled_from(["", "[dog]", f"(dog:{HUGE})"])), "steps": _or_junk(st.integers(-1, 20_000)),
    "sampler": _or_junk(st.sampled_from(["euler", "Euler a", "nope"])),
    "schedule": _or_junk(st.sampled_from(["karras", "vp", "nope"])), "guidance": _or_junk(numbers),
}
optional_fields = {
    "edit": _or_junk(st.fixed_dictionaries({}, optional={
        "init_image": _or_junk(st.sampled_from(["/nonexistent.png", ""])), "init_sha256": st.text(max_size=3),
        "strength": numbers, "mask": st.sampled_from(["", "m.png"]), "mask_sha256": st.text(max_size=3),
        "mask_blur": st.integers(-1, 100), "other": json_values})),
    "layout": _or_junk(st.fixed_dictionaries({}, optional={
        "places": _or_junk(st.lists(st.lists(_or_junk(st.sampled_from(["cat", 0, 0.5, 1, 2])), max_size=6),
                                    max_size=3)),
        "strength": _or_junk(numbers)})),
    "auto_layout": _or_junk(st.booleans()), "upscale": _or_junk(st.booleans()),
    "batch_size": _or_junk(st.integers(-1, 10_000)), "batch_row": _or_junk(st.integers(-1, 10_000)),
}


@FEW
@given(st.fixed_dictionaries(recipe_fields, optional=optional_fields))
def test_any_recipe_with_every_field_is_a_checked_task_or_one_input_error(data):
    import math

    from diffgen.sampling.settings import MAX_GUIDANCE
    from diffgen.sampling.tasks import MAX_REPLAY_BATCH

    try:
        task = task_from_recipe(data)
        placement = placement_of(data)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert 0 <= task.seed < 2**63 and task.steps >= 1
    assert math.isfinite(task.guidance) and 0 <= task.guidance <= MAX_GUIDANCE
    assert placement is None or 1 <= placement[0] <= MAX_REPLAY_BATCH and 0 <= placement[1] < placement[0]
    assert task.edit is None or 0 <= task.edit.strength <= 1
    assert task.layout is None or all(n.lower() in task.prompt.lower() for n, *_ in task.layout.places)


config_keys = {
    "": ["image_size"], "text": ["context_length", "vocab_size", "width", "heads", "layers", "arch"],
    "unet": ["base_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "head_dim", "dropout"],
    "denoiser": ["sigma_data", "sigma_min", "sigma_max", "p_mean", "p_std"],
    "layout": ["width", "heads", "modes"], "upscale": ["base_channels", "channel_mult", "crop", "sigma_max", "steps"],
    "train": ["lr", "batch_size", "steps", "seed", "precision", "layout_bias", "ema_decay"],
}
config_values = st.one_of(st.integers(-3, 2**70), st.sampled_from([8, 16, 32, 64, 77, 100_000, 2**40]),
                          st.floats(allow_nan=True, allow_infinity=True), st.just(1e39), st.just(1e-50),
                          st.lists(st.integers(-1, 100_000), max_size=12), st.text(max_size=5), st.booleans())


@FEW
@given(st.dictionaries(st.sampled_from([f"{s}.{k}" if s else k for s, ks in config_keys.items() for k in ks]),
                       config_values, max_size=5), st.booleans())
def test_any_config_dict_or_toml_file_is_bounded_or_one_config_error(flat, as_toml):
    import tomllib

    from diffgen.config import config_from_dict, load_config
    from diffgen.config_checks import MAX_SIZES
    from diffgen.errors import ConfigError

    data: dict = {}
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    try:
        if as_toml:  # the same values as a TOML file (those JSON cannot spell for TOML, such as NaN, left out)
            lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
            for section, values in data.items():
                if isinstance(values, dict):
                    lines += [f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
            text = "\n".join(lines) + "\n"
            try:
                tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                return
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "c.toml").write_text(text, encoding="utf-8")
                config = load_config(Path(tmp, "c.toml"))
        else:
            config = config_from_dict(data)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    for key, most in MAX_SIZES.items():
        section, _, name = key.rpartition(".")
        assert getattr(getattr(config, section) if section else config, name) <= most
