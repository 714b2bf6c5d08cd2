"""Layout-conditioned training (train.layout_bias): captions naming two or more objects are denoised
with sampling's attention bias toward their regions; the bias matches the sampler's for the same
boxes. That it changes the training, and that a run with it resumes exactly: test_resume.py
("layout_bias")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffgen.data import TrainingSet
from diffgen.engine.layout_bias import LayoutBias
from diffgen.engine.regions import Placement, TokenSpans
from diffgen.training.diffusion_loss import layout_bias_of

from .helpers import cli, make_shapes_folder, train_args, train_config

PAIR = "a dog to the left of a cat"
DOG, CAT = PAIR.index("dog"), PAIR.index("cat")
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


class Words:
    """One token per word, so positions can be counted by hand."""

    def encode(self, text: str) -> list[int]:
        return [0] * len(text.split())


def test_only_captions_naming_two_objects_get_the_bias_and_it_is_the_samplers():
    data = TrainingSet(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), [(PAIR,), ("a dog",), (PAIR,)],
                       [Path(f"{i}.png") for i in range(3)], None,
                       [{PAIR: ((DOG, DOG + 3, *LEFT), (CAT, CAT + 3, *RIGHT))}, {"a dog": ((2, 5, *LEFT),)},
                        {PAIR: ((DOG, DOG + 3, *RIGHT), (CAT, CAT + 3, *LEFT))}])
    spans = TokenSpans(Words(), 77)
    # image 2's caption was dropped for guidance: no bias, like image 1 with one object
    bias = layout_bias_of(data, [0, 1, 2], [PAIR, "a dog", ""], spans, 4.0, torch.device("cpu"))
    values = bias(5, 16)  # two rows after the images (a contrast's or a grounding pass's): none
    assert values.shape == (5, 1, 16, 77)
    assert values[0].any() and not values[1:].any()
    sampler = LayoutBias.of([PAIR], [[Placement(DOG, DOG + 3, LEFT), Placement(CAT, CAT + 3, RIGHT)]], spans, 4.0,
                            torch.device("cpu"))
    sampler.active = True
    torch.testing.assert_close(values[:1], sampler(1, 16))
    left = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4).flatten() == 1
    assert torch.equal(values[0, 0, :, 2], torch.where(left, 4.0, -4.0))  # "dog" is the third token


def test_the_layout_bias_on_data_without_regions_is_one_line_exit_2(tmp_path):
    folder = make_shapes_folder(tmp_path / "shapes")
    config = tmp_path / "laid.toml"
    config.write_text(train_config(train={"layout_bias": 6.0}))
    result = cli(*train_args(folder, tmp_path / "run", config, steps=2, clip_steps=1))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "layout_bias" in errors[0] and "object regions" in errors[0]


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_a_negative_or_nan_layout_bias_is_a_config_error(value):
    from diffgen.errors import ConfigError
    with pytest.raises(ConfigError, match="layout_bias"):
        train_config(train={"layout_bias": value})
