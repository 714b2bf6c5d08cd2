"""The shipped default model: found without -c, loads, matches its config file and the model
card, and stays under the 50 MB the project allows for it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffgen.checkpoint import default_checkpoint, load_model, read_checkpoint
from diffgen.config import load_config

from .helpers import ROOT


@pytest.fixture()
def shipped(monkeypatch):
    monkeypatch.delenv("DIFFGEN_CHECKPOINT", raising=False)
    return default_checkpoint()


def test_the_default_model_is_the_shipped_file_and_under_50_mb(shipped):
    assert shipped.resolve() == (ROOT / "checkpoints" / "default.safetensors").resolve()
    assert shipped.stat().st_size < 50e6


def test_the_default_model_loads_with_the_config_it_was_trained_with(shipped):
    tensors, config, metadata = read_checkpoint(shipped)
    # made by gpu64 from scratch, continued with gpu64-continue (the same model, another batch),
    # given its layout predictor by layout-stage (that U-Net and text tower, kept as they were),
    # its U-Net continued by layout-tune (the same model; training noise centred on sigma 1), then
    # given its upscaler by upscale-stage (everything else kept as it was)
    assert config == load_config(ROOT / "configs" / "upscale-stage.toml")
    tuned = load_config(ROOT / "configs" / "layout-tune.toml")
    assert (config.image_size, config.text, config.unet, config.denoiser, config.layout) == \
        (tuned.image_size, tuned.text, tuned.unet, tuned.denoiser, tuned.layout)
    assert config.layout == load_config(ROOT / "configs" / "layout-stage.toml").layout
    assert config.upscale.base_channels > 0 and metadata["training"]["upscale_steps"] == config.train.upscale_steps
    for earlier in ("gpu64", "gpu64-continue", "layout-stage"):
        before = load_config(ROOT / "configs" / f"{earlier}.toml")
        assert (config.image_size, config.text, config.unet) == (before.image_size, before.text, before.unet)
        assert replace(config.denoiser, p_mean=before.denoiser.p_mean) == before.denoiser
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    model = load_model(shipped)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    card = (ROOT / "checkpoints" / "README.md").read_text()
    assert model.content_hash[:10] in card
    assert model.layout is not None and f"{int(model.layout.trained_steps):,}" in card
    assert metadata["training"]["init"]["content_hash"][:10] in card  # the model the upscaler was added to
    assert model.upscaler is not None and f"{config.train.upscale_steps:,}" in card
