"""The whole text-to-image model: CLIP text encoder + EDM-preconditioned U-Net (+ the layout
predictor and the upscaler where the config has them), from one Config."""

from __future__ import annotations

import torch
from torch import nn

from diffgen.config import Config
from diffgen.engine.consistency import AttachedStudent
from diffgen.engine.denoiser import Conditioning, Denoiser
from diffgen.engine.layout_net import LayoutPredictor
from diffgen.engine.text import TextEncoder, TextEncoding, build_text_encoder
from diffgen.engine.unet import UNet
from diffgen.engine.upscaler import Upscaler


class DiffusionModel(nn.Module):
    """Holds the config, the text encoder, the denoiser, the layout predictor and the upscaler (each
    of the last two None where the config has none); ``state_dict`` is the checkpoint."""

    def __init__(self, config: Config, text_encoder: TextEncoder, denoiser: Denoiser,
                 layout: LayoutPredictor | None = None, upscaler: Upscaler | None = None):
        super().__init__()
        self.config = config
        self.text_encoder = text_encoder
        self.denoiser = denoiser
        self.layout = layout
        self.upscaler = upscaler
        # Set when loaded from a checkpoint: identifies the weights in image metadata.
        self.content_hash: str | None = None
        self.metadata: dict = {}
        self.file_sha256: str | None = None  # set when loaded from a file
        self.display_name = "model"  # what recipes call it: its metadata's name, else its file's stem
        # the adapters hooked in for sampling (name, weight, sha256: diffgen/adapters.py), for recipes
        self.adapters: list[dict] = []
        # the distilled few-step student for fast sampling (diffgen/students.py), where one is attached;
        # a plain attribute, not a submodule: it is not part of this model's weights or content hash
        self.student: AttachedStudent | None = None

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def encode_prompts(self, prompts: list[str]) -> tuple[Conditioning, TextEncoding]:
        """Prompts -> conditioning for the U-Net, plus the encoding (token counts, truncation)."""
        encoding = self.text_encoder.encode(prompts)
        return Conditioning(encoding.tokens, encoding.pooled), encoding

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: U-Net, CLIP text tower, CLIP image tower with the contrastive
        loss's logit scale (0 when loaded without it), layout predictor and upscaler (0 without one)."""
        from diffgen.engine.clip_text import IMAGE_TOWER_PREFIXES

        named = list(self.text_encoder.clip.named_parameters())
        image = sum(p.numel() for name, p in named if name.startswith(IMAGE_TOWER_PREFIXES))
        text = sum(p.numel() for _, p in named) - image
        unet = sum(p.numel() for p in self.denoiser.net.parameters())
        layout = sum(p.numel() for p in self.layout.parameters()) if self.layout is not None else 0
        upscaler = sum(p.numel() for p in self.upscaler.parameters()) if self.upscaler is not None else 0
        return {"unet": unet, "text": text, "image": image, "layout": layout, "upscaler": upscaler}


def build_model(config: Config, load_pretrained_text: bool = True, image_tower: bool = True) -> DiffusionModel:
    """A model with fresh U-Net weights; the text encoder is random or pretrained per config.

    ``load_pretrained_text=False`` skips fetching pretrained CLIP weights (a checkpoint has them).
    ``image_tower=False`` leaves out CLIP's image tower where the config allows (sampling needs
    only the text tower; see engine/clip_text.py).
    """
    text_encoder = build_text_encoder(config, load_weights=load_pretrained_text, image_tower=image_tower)
    net = UNet(config.unet, config.image_size, text_encoder.token_dim, text_encoder.pooled_dim)
    lay = config.layout
    layout = LayoutPredictor(text_encoder.token_dim, config.text.context_length, lay.width, lay.layers, lay.heads,
                             lay.modes, lay.spread) if lay.width else None
    upscaler = Upscaler(config.upscale) if config.upscale.base_channels else None
    return DiffusionModel(config, text_encoder, Denoiser.from_config(net, config), layout, upscaler)


class PromptCache:
    """Encodes each distinct prompt once and serves Conditioning batches from the cache.

    Prompts are encoded in sorted order and fixed-size chunks, so the cached values do not depend
    on the order in which prompts are first asked for (a resumed training run sees the same
    numbers as an uninterrupted one).
    """

    def __init__(self, text_encoder: TextEncoder, chunk_size: int = 256, weighted: bool = False):
        self.text_encoder = text_encoder
        self.chunk_size = chunk_size
        self.weighted = weighted  # read A1111's prompt-weight syntax (sampling, not training)
        self.rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def encode_all(self, prompts: list[str]) -> None:
        """Encode every prompt not cached yet."""
        missing = sorted(set(prompts) - self.rows.keys())
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start:start + self.chunk_size]
            encoding = self.text_encoder.encode(chunk, weighted=self.weighted)
            for i, prompt in enumerate(chunk):
                self.rows[prompt] = (encoding.tokens[i], encoding.pooled[i])

    def __call__(self, prompts: list[str]) -> Conditioning:
        """Conditioning (B rows) for ``prompts``."""
        self.encode_all(prompts)
        return Conditioning(torch.stack([self.rows[p][0] for p in prompts]),
                            torch.stack([self.rows[p][1] for p in prompts]))
