"""Strict config loading: every mistake is an error naming the key."""

from __future__ import annotations

import pytest

from diffgen.config import Config, config_from_dict, config_to_toml, load_config
from diffgen.errors import ConfigError

from .helpers import ROOT


def test_default_toml_matches_dataclass_defaults():
    assert load_config(ROOT / "configs" / "default.toml") == Config()


def test_tiny_config_loads(tiny_config):
    assert tiny_config.image_size == 8
    assert tiny_config.unet.channel_mult == (1, 2)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"imagesize": 32}, "imagesize"),
        ({"unet": {"base_channel": 8}}, "unet.base_channel"),
        ({"unet": {"base_channels": "64"}}, "unet.base_channels"),
        ({"unet": {"base_channels": 64.0}}, "unet.base_channels"),
        ({"unet": {"channel_mult": [1, "2"]}}, "unet.channel_mult[1]"),
        ({"unet": {"channel_mult": 2}}, "unet.channel_mult"),
        ({"train": {"steps": True}}, "train.steps"),
        ({"text": {"arch": 5}}, "text.arch"),
        ({"denoiser": 3}, "denoiser"),
        ({"unet": {"attention_resolutions": [5]}}, "unet.attention_resolutions"),
        ({"denoiser": {"sigma_min": -1.0}}, "denoiser.sigma_min"),
        ({"image_size": 24}, "image_size"),
        ({"train": {"caption_dropout": 1.0}}, "train.caption_dropout"),
        ({"text": {"heads": 0}}, "text.heads"),
        ({"unet": {"base_channels": 33}}, "unet.base_channels"),
        ({"unet": {"head_dim": 20}}, "unet.head_dim"),
        ({"unet": {"in_channels": 4}}, "unet.in_channels"),
        ({"train": {"checkpoint_every": 0}}, "train.checkpoint_every"),
        ({"train": {"steps": -1}}, "train.steps"),
        ({"train": {"layout_steps": 5}}, "train.layout_steps"),
        ({"layout": {"width": 30, "heads": 4}}, "layout.width"),
        ({"train": {"lr": float("nan")}}, "train.lr"),
        ({"text": {"vocab_size": 1000}}, "text.vocab_size"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(data)


def test_int_accepted_for_float():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_toml_round_trip(tmp_path, tiny_config):
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(tiny_config))
    assert load_config(path) == tiny_config


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("image_size = = 3")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[unet]\nwidth = 3\n")
    with pytest.raises(ConfigError, match="unknown.toml: unknown config key 'unet.width'"):
        load_config(unknown)
