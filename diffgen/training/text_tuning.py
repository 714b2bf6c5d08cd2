"""CLIP's text tower trained with the U-Net in the diffusion stage (``train.text_lr_scale`` > 0).

The contrastive stage matches a caption to a whole image, a task that word order hardly changes
(CLIP-style encoders treat captions much like bags of words: Yuksekgonul et al., "When and why
vision-language models behave like bags-of-words", ICLR 2023). The shipped tower encodes "a dog to
the left of a cat" and "a cat to the left of a dog" with pooled cosine 0.96-0.99, so a frozen tower
leaves the U-Net guessing which object goes where. Letting the denoising loss reach the tower asks
it for exactly that, as GLIDE trains its text transformer with the diffusion model.

The tower's weights then get an EMA like the U-Net's (decay and schedule shared), kept in the
training state for exact resume and shipped in the checkpoint with the U-Net's average. The image
tower and the contrastive temperature stay frozen: the denoising loss does not use them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from diffgen import distributed
from diffgen.engine.clip_text import is_image_tower_key
from diffgen.engine.denoiser import Conditioning
from diffgen.engine.text import TextEncoder
from diffgen.errors import InputError
from diffgen.state import EMA_TEXT_PREFIX


class TextTuning:
    """The text tower's trainable parameters, their EMA, and captions encoded with gradients."""

    def __init__(self, encoder: TextEncoder, lr_scale: float, device: torch.device, dist: distributed.DistInfo):
        self.encoder, self.lr_scale, self.device = encoder, lr_scale, device
        self.params = {name: p for name, p in encoder.named_parameters()
                       if not is_image_tower_key(f"text_encoder.{name}")}
        encoder.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        self.ema = {name: p.detach().clone() for name, p in self.params.items()}
        # DDP averages the tower's gradients across processes (only parameters that need them)
        self.net = distributed.wrapped(encoder, dist)
        self.token_ids: dict[str, torch.Tensor] = {}

    def param_group(self) -> dict:
        """The optimizer group: the tower at ``lr_scale`` times the U-Net's learning rate."""
        return {"params": list(self.params.values()), "lr_scale": self.lr_scale}

    def __call__(self, captions: list[str]) -> Conditioning:
        """Conditioning for ``captions``, differentiable in the tower's weights."""
        # Each distinct caption is tokenized once: the Python tokenizer is slow next to a step.
        missing = sorted(set(captions) - self.token_ids.keys())
        if missing:
            self.token_ids.update(zip(missing, self.encoder.tokenize(missing)[0], strict=True))
        ids = torch.stack([self.token_ids[c] for c in captions]).to(self.device)
        tokens, pooled = self.net(ids)
        return Conditioning(tokens, pooled)

    def update_ema(self, decay: float) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.values()), list(self.params.values()), 1 - decay)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The EMA as state tensors (the raw weights are in the model's own)."""
        return {f"{EMA_TEXT_PREFIX}.{name}": v for name, v in self.ema.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the EMA from a training state."""
        missing = [name for name in self.ema if f"{EMA_TEXT_PREFIX}.{name}" not in tensors]
        if missing:
            raise InputError(f"--resume: the training state has no text-tower EMA ({len(missing)} tensors missing); "
                             "it was written with train.text_lr_scale = 0")
        with torch.no_grad():
            for name, value in self.ema.items():
                value.copy_(tensors[f"{EMA_TEXT_PREFIX}.{name}"])

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """The EMA weights in the tower for the duration (for sample grids), then the raw ones."""
        raw = {name: p.detach().clone() for name, p in self.params.items()}
        self._copy(self.ema)
        try:
            yield
        finally:
            self._copy(raw)

    def ship(self) -> None:
        """Leave the EMA weights in the tower (what the checkpoint holds) and freeze it again."""
        self._copy(self.ema)
        self.encoder.requires_grad_(False)

    def _copy(self, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(values[name])
