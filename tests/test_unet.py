"""The U-Net is wired as designed: shapes, text reaches the output, no dead parameters, positions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffgen.config import Config
from diffgen.engine.unet import POSITION_FREQUENCIES, TextMixer, TransformerBlock, UNet, position_features

from .helpers import randomize_zero_params


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


def test_position_features_give_each_pixel_its_place():
    feats = position_features(4, 6, torch.device("cpu"))
    assert feats.shape == (24, 4 * POSITION_FREQUENCIES)
    grid = feats.view(4, 6, -1)
    cos_x = grid[..., 2 * POSITION_FREQUENCIES]  # cos(pi x): +1 at the left edge, -1 at the right
    assert torch.all(cos_x[:, :3] > 0) and torch.all(cos_x[:, 3:] < 0)
    assert torch.allclose(cos_x, cos_x[:1].expand(4, 6))  # x alone: the same down every column
    assert torch.allclose(cos_x[0], torch.cos(torch.pi * (torch.arange(6) + 0.5) / 6))
    assert len({tuple(row.tolist()) for row in feats}) == 24  # no two pixels alike


def test_without_positions_a_transformer_block_mirrors_with_its_input():
    """Attention, layer norms and the feed-forward act per position: a mirrored input gives the
    mirrored output, so nothing in the block can tell left from right. The position embedding can."""
    torch.manual_seed(0)
    x, context = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 12)
    for positions in (False, True):
        block = TransformerBlock(16, 12, head_dim=8, depth=1, position_embedding=positions)
        randomize_zero_params(block)
        mirrored = torch.allclose(block(x.flip(-1), context), block(x, context).flip(-1), atol=1e-5)
        assert mirrored is not positions


@pytest.mark.parametrize("growth, part", [({"position_embedding": True}, ".pos_proj."),
                                          ({"text_mixer_layers": 2}, ".text_mixer.")])
def test_added_layers_load_a_model_without_them_and_start_as_that_model(tiny_config, growth, part):
    torch.manual_seed(0)
    plain = UNet(tiny_config.unet, tiny_config.image_size, context_dim=12, pooled_dim=6)
    randomize_zero_params(plain)
    cfg = dataclasses.replace(tiny_config, unet=dataclasses.replace(tiny_config.unet, **growth))
    grown = UNet(cfg.unet, cfg.image_size, context_dim=12, pooled_dim=6)
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(part in f".{k}" for k in missing)
    assert torch.equal(grown(*inputs()), plain(*inputs()))
    grown(*inputs()).square().mean().backward()
    # the zero-initialised output layers are where the gradient first arrives: none is stuck at zero
    params = dict(grown.named_parameters())
    outputs = [k for k in missing if k.endswith(("pos_proj.weight", "to_out.weight", "ff.2.weight"))]
    assert outputs and all(params[k].grad.abs().sum() > 0 for k in outputs)


def test_the_text_mixer_lets_a_word_see_the_words_after_it():
    """CLIP's tokens are causal; after the mixer the first token depends on the last one."""
    torch.manual_seed(0)
    mixer = TextMixer(12, head_dim=4, num_layers=1)
    tokens = torch.randn(2, 5, 12)
    assert torch.equal(mixer(tokens), tokens)  # zero-initialised: the identity
    randomize_zero_params(mixer)
    changed = tokens.clone()
    changed[:, -1] = torch.randn(2, 12)
    assert not torch.allclose(mixer(changed)[:, 0], mixer(tokens)[:, 0], atol=1e-4)
