"""The U-Net is wired as designed: shapes, text reaches the output, no dead parameters."""

from __future__ import annotations

import pytest
import torch

from diffgen.config import Config
from diffgen.engine.unet import UNet

from .conftest import randomize_zero_params


@pytest.fixture()
def net(tiny_config):
    torch.manual_seed(0)
    unet = UNet(tiny_config.unet, tiny_config.image_size, context_dim=12, pooled_dim=6)
    randomize_zero_params(unet)
    return unet


def inputs(batch: int = 2, size: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, size, size, generator=gen), torch.randn(batch, generator=gen),
            torch.randn(batch, 77, 12, generator=gen), torch.randn(batch, 6, generator=gen))


def test_output_shape(net):
    assert net(*inputs()).shape == (2, 3, 8, 8)


def test_default_config_shape_and_size():
    cfg = Config()
    unet = UNet(cfg.unet, cfg.image_size, context_dim=128, pooled_dim=128)
    params = sum(p.numel() for p in unet.parameters())
    assert 2e6 < params < 10e6
    x = torch.randn(1, 3, 32, 32)
    assert unet(x, torch.zeros(1), torch.randn(1, 77, 128), torch.randn(1, 128)).shape == x.shape


def test_tokens_and_pooled_each_change_the_output(net):
    x, c_noise, tokens, pooled = inputs()
    base = net(x, c_noise, tokens, pooled)
    assert not torch.allclose(net(x, c_noise, tokens + 1.0, pooled), base)
    assert not torch.allclose(net(x, c_noise, tokens, pooled + 1.0), base)
    assert not torch.allclose(net(x, c_noise + 0.5, tokens, pooled), base)


def test_batch_rows_are_independent(net):
    net.eval()
    x, c_noise, tokens, pooled = inputs(batch=3)
    full = net(x, c_noise, tokens, pooled)
    single = net(x[1:2], c_noise[1:2], tokens[1:2], pooled[1:2])
    assert torch.allclose(full[1:2], single, atol=1e-5)


def test_every_parameter_receives_a_gradient(net):
    net(*inputs()).square().mean().backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_zero_initialised_output_starts_at_zero(tiny_config):
    unet = UNet(tiny_config.unet, tiny_config.image_size, context_dim=12, pooled_dim=6)
    assert torch.count_nonzero(unet(*inputs())) == 0
