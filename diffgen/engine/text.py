"""CLIP text encoder (open_clip): prompts -> per-token states (B, L, D) and pooled embedding (B, E).

open_clip is imported only where the full CLIP (with its image tower) is built: sampling from a
checkpoint uses ``clip_text.CLIPTextTower``, which skips that import (see there).

The per-token states (after the final LayerNorm) feed the U-Net's cross-attention; the pooled,
projected embedding (the CLIP text feature) is added to the noise-level embedding. The empty
prompt is the unconditional input for classifier-free guidance.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
from torch import nn

from diffgen.config import Config, TextConfig
from diffgen.engine.clip_text import CLIPTextTower, simple_tokenizer
from diffgen.errors import InputError, TextEncoderError

# How long to wait for the weights host before declaring the machine offline. open_clip and
# huggingface_hub would otherwise retry for about a minute.
NETWORK_PROBE_TIMEOUT_S = 3.0
HF_HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class TextEncoding:
    """What the encoder returns for a batch of prompts."""

    tokens: torch.Tensor  # (B, L, D) per-token states
    pooled: torch.Tensor  # (B, E) projected pooled embedding
    ids: torch.Tensor  # (B, L) token ids, int64
    num_tokens: list[int]  # BPE tokens per prompt before truncation, start/end markers included
    truncated: list[bool]  # True where the prompt did not fit in the context
    weights: torch.Tensor | None = None  # (B, L) per-token weights when the prompts used weight syntax


def build_clip(cfg: Config) -> nn.Module:
    """An open_clip CLIP with random weights sized by ``cfg.text`` (image tower at cfg.image_size)."""
    import open_clip

    t = cfg.text
    vision = open_clip.model.CLIPVisionCfg(
        layers=t.vision_layers,
        width=t.vision_width,
        head_width=t.vision_head_width,
        patch_size=t.vision_patch_size,
        image_size=cfg.image_size,
    )
    text = open_clip.model.CLIPTextCfg(
        context_length=t.context_length,
        vocab_size=t.vocab_size,
        width=t.width,
        heads=t.heads,
        layers=t.layers,
    )
    return open_clip.model.CLIP(embed_dim=t.embed_dim, vision_cfg=vision, text_cfg=text)


def _host_reachable(host: str, timeout: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_weights(pretrained_cfg: dict) -> str | None:
    """Path of already-downloaded weights for an open_clip pretrained entry, or None."""
    hub = pretrained_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            path = try_to_load_from_cache(repo_id, name)
            if isinstance(path, str):
                return path
    url = pretrained_cfg.get("url", "")
    if url:
        path = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)
        if path.is_file():
            return str(path)
    return None


def _weights_host(pretrained_cfg: dict) -> str:
    if pretrained_cfg.get("hf_hub"):
        return HF_HUB_HOST
    return urlparse(pretrained_cfg.get("url", "")).hostname or HF_HUB_HOST


def load_pretrained_clip(arch: str, pretrained: str) -> nn.Module:
    """An open_clip architecture with weights from a pretrained tag or a local .safetensors file.

    A download is attempted only when the weights host answers within a few seconds; offline, this
    fails fast with a message saying what to do instead.
    """
    import open_clip

    if arch not in open_clip.list_models():
        raise InputError(f"unknown open_clip architecture '{arch}' (see open_clip.list_models())")
    if not pretrained:
        return open_clip.create_model(arch)
    local = Path(pretrained).expanduser()
    if local.suffix == ".safetensors" or local.exists():
        if not local.is_file():
            raise InputError(f"text encoder weights file not found: {local}")
        if local.suffix != ".safetensors":
            raise InputError(f"text encoder weights must be a .safetensors file, got {local.name}")
        from safetensors.torch import load_file

        model = open_clip.create_model(arch)
        try:
            model.load_state_dict(load_file(str(local)))
        except Exception as exc:  # noqa: BLE001 - any mismatch is the user's file
            raise InputError(f"{local} does not hold {arch} weights: {str(exc).splitlines()[0]}") from None
        return model
    tags = open_clip.list_pretrained_tags_by_model(arch)
    pretrained_cfg = open_clip.pretrained.get_pretrained_cfg(arch, pretrained)
    if not pretrained_cfg:
        raise InputError(
            f"'{pretrained}' is neither a local file nor a pretrained tag of {arch} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    cached = _cached_weights(pretrained_cfg)
    if cached is None:
        host = _weights_host(pretrained_cfg)
        if not _host_reachable(host):
            raise TextEncoderError(
                f"cannot download {arch}/{pretrained}: {host} is unreachable (offline?). "
                f"Download the weights elsewhere and pass a local .safetensors file instead."
            )
    return open_clip.create_model(arch, pretrained=cached or pretrained)


class TextEncoder(nn.Module):
    """Wraps an open_clip CLIP model; ``encode(prompts)`` gives a TextEncoding."""

    def __init__(self, clip: nn.Module, context_length: int):
        super().__init__()
        if not hasattr(clip, "token_embedding"):
            raise InputError(
                f"{type(clip).__name__} has no built-in CLIP text transformer; diffgen supports "
                "open_clip models whose text tower is the standard CLIP transformer"
            )
        # open_clip's CLIP (untyped) or CLIPTextTower: its parts are read by name, as open_clip names them
        self.clip: Any = clip
        self.context_length = context_length
        self._tokenizer = None

    @property
    def tokenizer(self):
        """open_clip's BPE tokenizer, built on first use (0.1 s; a model sized on the meta
        device to check a checkpoint's shapes never needs one)."""
        if self._tokenizer is None:
            self._tokenizer = simple_tokenizer(self.context_length)
        return self._tokenizer

    @property
    def token_dim(self) -> int:
        """D, the width of the per-token states."""
        return self.clip.token_embedding.embedding_dim

    @property
    def pooled_dim(self) -> int:
        """E, the width of the pooled projected embedding."""
        proj = self.clip.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Token ids (B, L) and each prompt's full token count (start and end markers included).

        A prompt longer than L keeps its first L-1 tokens and ends with the end marker, as CLIP
        was trained; the count lets callers warn about what was cut.
        """
        ids, counts, _ = self._pack([[(prompt, 1.0)] for prompt in prompts])
        return ids, counts

    def tokenize_weighted(self, prompts: list[str]) -> tuple[torch.Tensor, list[int], torch.Tensor]:
        """Like ``tokenize`` for prompts in A1111's weight syntax (engine/prompt_weights.py): ids
        (B, L) of the text without the brackets, token counts, and each token's weight (B, L)."""
        from diffgen.engine.prompt_weights import parse_weights

        return self._pack([parse_weights(prompt) for prompt in prompts])

    def _pack(self, prompts: list[list[tuple[str, float]]]) -> tuple[torch.Tensor, list[int], torch.Tensor]:
        """Chunks of (text, weight) per prompt -> ids (B, L), full token counts, weights (B, L). A
        prompt longer than L keeps its first L-1 tokens and ends with the end marker."""
        tok = self.tokenizer
        ids = torch.zeros(len(prompts), self.context_length, dtype=torch.long)
        weights = torch.ones(len(prompts), self.context_length)
        counts = []
        for row, chunks in enumerate(prompts):
            seq, seq_weights = [tok.sot_token_id], [1.0]
            for text, weight in chunks:
                chunk = tok.encode(text)
                seq += chunk
                seq_weights += [weight] * len(chunk)
            seq.append(tok.eot_token_id)
            seq_weights.append(1.0)
            counts.append(len(seq))
            if len(seq) > self.context_length:
                seq = seq[: self.context_length - 1] + [tok.eot_token_id]
                seq_weights = seq_weights[: self.context_length - 1] + [1.0]
            ids[row, : len(seq)] = torch.tensor(seq)
            weights[row, : len(seq)] = torch.tensor(seq_weights)
        return ids, counts, weights

    def _states(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, n) -> per-token states (B, n, D) of the first n <= L positions."""
        clip = self.clip
        n = ids.shape[1]
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(ids).to(cast_dtype) + clip.positional_embedding[:n].to(cast_dtype)
        mask = clip.attn_mask[:n, :n] if clip.attn_mask is not None else None
        return clip.ln_final(clip.transformer(x, attn_mask=mask))

    def token_states(self, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Per-token states (B, n, D) of the prompts' first n positions, n the longest prompt's
        token count, and each prompt's count. The tower's mask is causal, so no state depends on
        the padding after it: leaving the padding out makes a batch of short captions several
        times cheaper (the layout stage). A tower without the causal mask runs all L positions."""
        ids, counts = self.tokenize(prompts)
        n = min(max(counts), self.context_length) if self.clip.attn_mask is not None else self.context_length
        return self._states(ids[:, :n].to(self.clip.token_embedding.weight.device)), counts

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, L) -> per-token states (B, L, D), pooled projected embedding (B, E)."""
        clip = self.clip
        tokens = self._states(ids)
        if clip.text_pool_type == "argmax":  # the end-of-text token has the largest id
            pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), ids.argmax(dim=-1)]
        else:
            from open_clip.transformer import text_global_pool

            pooled = text_global_pool(tokens, ids, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
        proj = clip.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return tokens, pooled

    def encode(self, prompts: list[str], weighted: bool = False) -> TextEncoding:
        """Tokenize and encode on the encoder's device; prompts past the context are truncated.

        ``weighted`` reads A1111's weight syntax (for sampling; training captions are plain text):
        each token's state is scaled by its weight, then the sequence is rescaled to its original
        mean. The pooled embedding stays that of the unweighted sequence."""
        from diffgen.engine.prompt_weights import has_weights

        prompts = list(prompts)
        weights = None
        if weighted and any(has_weights(p) for p in prompts):
            ids, counts, weights = self.tokenize_weighted(prompts)
        else:
            ids, counts = self.tokenize(prompts)
        ids = ids.to(self.clip.token_embedding.weight.device)
        tokens, pooled = self(ids)
        if weights is not None:
            rows = (weights != 1).any(dim=1).to(tokens.device)  # rows without weights stay bit-identical
            w = weights.to(tokens.device, tokens.dtype)[:, :, None]
            mean = tokens.mean(dim=(1, 2), keepdim=True)
            scaled = tokens * w
            scaled = scaled * (mean / scaled.mean(dim=(1, 2), keepdim=True))
            tokens = torch.where(rows[:, None, None], scaled, tokens)
        return TextEncoding(
            tokens=tokens,
            pooled=pooled,
            ids=ids,
            num_tokens=counts,
            truncated=[c > self.context_length for c in counts],
            weights=weights.cpu() if weights is not None else None,
        )


def build_text_encoder(cfg: Config, load_weights: bool = True, image_tower: bool = True) -> TextEncoder:
    """A TextEncoder from config: random init, or an open_clip arch with pretrained weights.

    ``load_weights=False`` skips fetching pretrained weights (a checkpoint will supply them).
    ``image_tower=False`` builds diffgen's own CLIP as its text tower alone, without importing
    open_clip (for sampling and encoding); open_clip architectures always come whole.
    """
    t: TextConfig = cfg.text
    if not image_tower and not t.arch:
        return TextEncoder(CLIPTextTower(cfg), t.context_length)
    if t.arch:
        clip = load_pretrained_clip(t.arch, t.pretrained if load_weights else "")
        return TextEncoder(clip, cast(int, clip.context_length))
    return TextEncoder(build_clip(cfg), t.context_length)
