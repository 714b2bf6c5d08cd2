"""The diffusion stage's loss for one micro-batch, as a named object.

The EDM denoising loss (Karras et al. 2022) of the batch's images under their drawn captions
(empty ones for classifier-free guidance), and, where the config turns them on, in the same
forward pass: the caption contrast (extra rows under negative captions, train.negative_weight),
the grounding loss (each name's attention inside its region, train.grounding_weight, with extra
rows at high noise) and the layout bias on the U-Net's attention (train.layout_bias). The extra
terms are returned by name beside the total, so that the denoising loss compares across runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from diffgen import devices
from diffgen.data import TrainingSet
from diffgen.engine.denoiser import Conditioning, Denoiser, contrast_loss, denoising_loss, noised, noised_between
from diffgen.engine.layout_bias import LayoutBias, attention_biased
from diffgen.engine.regions import TokenSpans, boxes_by_name
from diffgen.engine.unet import UNet
from diffgen.training.batches import NoiseGenerator, image_batch, pick_captions, pick_negatives
from diffgen.training.grounding import grounding_loss, grounding_targets, kept_attention
from diffgen.training.run import Run


class DiffusionLoss:
    """``loss(indices, generator)``: the micro-batch's mean loss, or (the total, its named parts)
    when the config adds terms to the denoising loss. ``unet`` is the bare network (its attention
    modules are read and biased), ``denoiser`` wraps what runs forward (DDP under torchrun),
    ``encode`` turns captions into conditioning (a prompt cache, or the text tower being trained)."""

    def __init__(self, run: Run, unet: UNet, denoiser: Denoiser,
                 encode: Callable[[list[str]], Conditioning]):
        t = run.cfg.train
        self.run, self.unet, self.denoiser, self.encode = run, unet, denoiser, encode
        self.autocast = devices.autocast(run.device, t.precision)
        self.noise_generator = NoiseGenerator(run.device)
        text = run.model.text_encoder
        self.spans = TokenSpans(text.tokenizer, text.context_length) if t.grounding_weight > 0 or t.layout_bias \
            else None
        self.cross_attention = unet.cross_attentions()

    def __call__(self, idx: list[int], gen: torch.Generator
                 ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t, d = self.run.cfg.train, self.run.cfg.denoiser
        grounded = t.grounding_weight > 0
        captions = pick_captions(self.run.data, idx, gen, t.caption_dropout)
        x0 = image_batch(self.run.data, idx, self.run.device)
        noisy, sigma = noised(x0, d.p_mean, d.p_std, self.noise_generator(gen), d.high_noise_share,
                              (d.high_noise_min_sigma, d.sigma_max))
        rows, negatives = (pick_negatives(self.run.data, idx, captions, sigma, d.sigma_data, gen)
                           if t.negative_weight else ([], []))
        # the contrast's rows ride in the same forward pass, under their negative captions, and so
        # do the grounding pass's: the batch's first images again, at noise levels only it draws
        extra = min(t.grounding_pass_images, len(idx)) if grounded else 0
        cond = self.encode(captions + negatives + captions[:extra])
        if rows:
            noisy, sigma, x0 = (torch.cat([v, v[rows]]) for v in (noisy, sigma, x0))
        if extra:
            pass_noisy, pass_sigma = noised_between(x0[:extra], t.grounding_min_sigma, d.sigma_max,
                                                    self.noise_generator(gen))
            noisy, sigma, x0 = torch.cat([noisy, pass_noisy]), torch.cat([sigma, pass_sigma]), \
                torch.cat([x0, x0[:extra]])
        bias = layout_bias_of(self.run.data, idx, captions, self.spans, t.layout_bias, self.run.device) \
            if t.layout_bias and self.spans is not None else None
        with self.autocast, kept_attention(self.cross_attention, grounded) as attention, \
                attention_biased(self.unet, bias) if bias is not None else contextlib.nullcontext():
            losses = denoising_loss(self.denoiser, noisy, sigma, x0, cond)
        n = len(idx)
        denoising = losses[:n].mean()
        # the extra terms are logged apart, so that the denoising loss compares across runs
        parts: dict[str, torch.Tensor] = {}
        if t.negative_weight:
            parts["contrast"] = (contrast_loss(losses[rows], losses[n:n + len(rows)], t.negative_sharpness).sum()
                                 / n if rows else denoising.new_zeros(()))
        if grounded:
            assert self.spans is not None  # made for a grounded run
            # images below the noise floor name nothing, like captions dropped for guidance, and
            # the contrast's rows neither (their captions are not the pictures')
            named = [c if s >= t.grounding_min_sigma else "" for c, s in zip(captions, sigma[:n].tolist())]
            named += [""] * len(rows) + captions[:extra]
            targets = grounding_targets(self.run.data, idx + [idx[r] for r in rows] + idx[:extra], named,
                                        self.spans, self.run.device)
            parts["grounding"] = grounding_loss(attention, targets)
        if not parts:
            return denoising
        total = denoising + t.negative_weight * parts.get("contrast", 0.0) \
            + t.grounding_weight * parts.get("grounding", 0.0)
        return total, {"denoising": denoising, **parts}


def layout_bias_of(data: TrainingSet, indices: list[int], captions: list[str], spans: TokenSpans,
                   strength: float, device: torch.device) -> LayoutBias:
    """Sampling's layout bias (active) for the batch images whose drawn caption names two or more
    objects with regions: the prompts the layout predictor lays out when sampling. Other rows, and
    any rows after the batch's images, get none."""
    laid = [c if c and len(boxes_by_name(data.regions_of(i, c))) >= 2 else "" for i, c in zip(indices, captions)]
    bias = LayoutBias(grounding_targets(data, indices, laid, spans, device), len(indices), strength, device)
    bias.active = True
    return bias
