"""A tiny end-to-end check: optimisation of the EDM loss on a fixed tiny batch lowers the loss."""

from __future__ import annotations

import pytest
import torch

from diffgen.engine.denoiser import Conditioning, edm_loss


def fixed_batch(size: int = 8) -> tuple[torch.Tensor, list[str]]:
    """Four flat colours, each with its caption, in [-1, 1]."""
    colours = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "white": (1, 1, 1)}
    images = torch.stack([torch.tensor(c, dtype=torch.float32)[:, None, None].expand(3, size, size)
                          for c in colours.values()])
    return images, [f"a {name} square" for name in colours]


def repeat(cond: Conditioning, times: int) -> Conditioning:
    return Conditioning(cond.tokens.repeat(times, 1, 1), cond.pooled.repeat(times, 1))


def evaluation_loss(model, images, cond) -> float:
    """Loss at fixed noise (same sigmas and noise every call), so values are comparable."""
    gen = torch.Generator().manual_seed(123)
    repeats = 16
    with torch.no_grad():
        return edm_loss(model.denoiser, images.repeat(repeats, 1, 1, 1),
                        repeat(cond, repeats),
                        generator=gen).mean().item()


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(tiny_model):
    torch.manual_seed(0)
    images, captions = fixed_batch(tiny_model.config.image_size)
    params = list(tiny_model.denoiser.parameters()) + list(tiny_model.text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    cond, _ = tiny_model.encode_prompts(captions)
    before = evaluation_loss(tiny_model, images, cond)
    for _ in range(80):
        cond, _ = tiny_model.encode_prompts(captions)
        loss = edm_loss(tiny_model.denoiser, images.repeat(4, 1, 1, 1),
                        repeat(cond, 4)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluation_loss(tiny_model, images, tiny_model.encode_prompts(captions)[0])
    assert after < 0.5 * before, (before, after)
