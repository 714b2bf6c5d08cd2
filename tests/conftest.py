"""Shared fixtures: the tiny config and a tiny random-weight model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffgen.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    return load_config(ROOT / "configs" / "tiny.toml")


@pytest.fixture()
def tiny_model(tiny_config):
    from diffgen.model import build_model

    torch.manual_seed(0)
    return build_model(tiny_config)


def randomize_zero_params(module: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised layers small random weights, as they would have after training.

    Zero-initialised output layers make a fresh network ignore its inputs; tests that check how
    inputs reach the output need them non-zero.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A tiny checkpoint whose zero-initialised layers are made non-zero, so images depend on
    the prompt, the seed and every sampler step."""
    from diffgen.checkpoint import save_model
    from diffgen.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config)
    randomize_zero_params(model.denoiser)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(path, model)
    return path
