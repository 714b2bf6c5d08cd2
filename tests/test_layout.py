"""Sampling with a layout (sampling/layout.py): the attention-logit bias against hand-computed
values, the U-Net's attention pulled into each name's box, and nothing changed outside the block
or below the noise floor."""

from __future__ import annotations

import torch

from diffgen.engine.layout_bias import LayoutBias, laid_out
from diffgen.engine.model import PromptCache
from diffgen.engine.regions import GroundingTargets, Placement, TokenSpans
from diffgen.training.grounding import inside_shares, kept_attention

from .helpers import randomize_zero_params

PROMPT = "a dog to the left of a cat"
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


def layout_for(model, strength: float) -> tuple[LayoutBias, list[int], list[int]]:
    text = model.text_encoder
    spans = TokenSpans(text.tokenizer, text.context_length)
    dog, cat = PROMPT.index("dog"), PROMPT.index("cat")
    bias = LayoutBias.of([PROMPT], [[Placement(dog, dog + 3, LEFT), Placement(cat, cat + 3, RIGHT)]], spans,
                         strength, torch.device("cpu"))
    return bias, spans.positions(PROMPT, dog, dog + 3), spans.positions(PROMPT, cat, cat + 3)


def test_the_bias_raises_a_names_tokens_inside_its_box_and_lowers_them_outside(tiny_model):
    bias, dog, cat = layout_for(tiny_model, 2.0)
    assert bias(1, 16) is None  # inactive until the sampler is at a noise level it covers
    bias.active = True
    values = bias(2, 16)  # guidance's batch: conditional rows, then unconditional ones
    assert values.shape == (2, 1, 16, 77)
    left = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4).flatten() == 1  # 4 x 4 pixels, raster order
    expected = torch.zeros(16, 77)
    expected[:, dog] = torch.where(left, 2.0, -2.0)[:, None]
    expected[:, cat] = torch.where(left, -2.0, 2.0)[:, None]
    torch.testing.assert_close(values[0, 0], expected)
    assert not values[1].any()  # the unconditional branch draws no layout
    assert torch.equal(bias(1, 16), values[:1])


def test_a_layout_pulls_each_names_attention_into_its_box_and_leaves_the_unet_as_it_was(tiny_model):
    randomize_zero_params(tiny_model.denoiser)
    unet = tiny_model.denoiser.net
    modules = unet.cross_attentions()
    x, sigma = torch.randn(1, 3, 8, 8), torch.full((1,), 10.0)
    cond = PromptCache(tiny_model.text_encoder)([PROMPT])

    def shares(denoise) -> torch.Tensor:
        with kept_attention(modules) as kept:
            denoise(x, sigma)
        names = torch.zeros(2, 77)
        names[0, dog], names[1, cat] = 1.0, 1.0
        targets = GroundingTargets(torch.tensor([0, 0]), names, [[LEFT], [RIGHT]])
        return torch.stack([inside_shares(block, targets) for block in kept]).mean(0)

    def plain(x, sigma):
        return tiny_model.denoiser(x, sigma, cond)

    bias, dog, cat = layout_for(tiny_model, 4.0)
    before, expected = shares(plain), plain(x, sigma)
    with laid_out(unet, plain, bias, min_sigma=5.0) as biased:
        during = shares(biased)
        changed = biased(x, sigma)
        below = biased(x, torch.full((1,), 1.0))  # under the floor the bias is off
    assert (during > before).all() and (during > 0.9).all()
    assert not torch.allclose(changed, expected)
    torch.testing.assert_close(below, plain(x, torch.full((1,), 1.0)))
    assert all(m.logit_bias is None for m in modules)
    torch.testing.assert_close(plain(x, sigma), expected)


def test_a_layout_of_strength_zero_changes_nothing(tiny_model):
    randomize_zero_params(tiny_model.denoiser)
    cond = PromptCache(tiny_model.text_encoder)([PROMPT])
    x, sigma = torch.randn(1, 3, 8, 8), torch.full((1,), 10.0)

    def plain(x, sigma):
        return tiny_model.denoiser(x, sigma, cond)

    bias, _, _ = layout_for(tiny_model, 0.0)
    with laid_out(tiny_model.denoiser.net, plain, bias, min_sigma=0.0) as biased:
        torch.testing.assert_close(biased(x, sigma), plain(x, sigma))
