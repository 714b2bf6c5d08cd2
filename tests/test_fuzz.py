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
