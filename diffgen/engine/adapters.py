"""Adapters on a frozen model: LoRA on the U-Net's attention and a learned embedding for a word.

LoRA (Hu et al. 2021) adds ``weight * up(down(x))`` to a linear layer's output, with ``down``
(rank x in) and ``up`` (out x rank) small; ``up`` starts at zero so a new adapter starts as the base
model. Textual inversion (Gal et al. 2022) replaces the input embeddings of a word's BPE pieces by
learned vectors: at weight w each piece's embedding becomes ``e + w (v - e)``.

Both attach as forward hooks, so the base model's modules, weights and state_dict stay untouched:
removing the hooks gives back the base model exactly, several adapters stack, and an adapter at
weight 0 is never attached at all (its images are the base model's, bit for bit). This module is
the mathematics only; the file format is diffgen/adapters.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from diffgen.engine.unet import Attention

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out")


def lora_layers(unet: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers LoRA adapts: every attention's q, k, v and output projections, by name."""
    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            for target in LORA_TARGETS:
                out[f"{name}.{target}"] = getattr(module, target)
    return out


class Adapter(nn.Module):
    """The trainable tensors of one adapter: LoRA pairs by layer name and/or a word's vectors.

    ``state_dict`` names: ``lora.<layer with dots as '__'>.down|up`` and ``embedding.vectors``;
    ``trigger_ids`` (the word's BPE pieces) is a buffer so that it travels with the tensors."""

    trigger_ids: torch.Tensor  # a buffer

    def __init__(self, lora: dict[str, tuple[int, int]] | None = None, rank: int = 4,
                 trigger_ids: list[int] | None = None, init_vectors: torch.Tensor | None = None,
                 seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.rank = rank
        self.lora = nn.ParameterDict()
        for name, (in_f, out_f) in sorted((lora or {}).items()):
            key = name.replace(".", "__")
            # Kaiming-like down, zero up: the product starts at zero, the gradient of up does not
            self.lora[f"{key}__down"] = nn.Parameter(torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f))
            self.lora[f"{key}__up"] = nn.Parameter(torch.zeros(out_f, rank))
        self.vectors: nn.Parameter | None = None
        self.register_buffer("trigger_ids", torch.tensor(trigger_ids or [], dtype=torch.long))
        if init_vectors is not None:
            self.vectors = nn.Parameter(init_vectors.detach().clone().float())

    def lora_pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(down, up) by the adapted layer's name in the U-Net."""
        names = sorted({k.rsplit("__", 1)[0] for k in self.lora.keys()})
        return {n.replace("__", "."): (self.lora[f"{n}__down"], self.lora[f"{n}__up"]) for n in names}


class Attached:
    """The hooks of the adapters attached to a model; ``enabled = False`` makes every hook pass
    its input through (the base model, for training's prior-preservation targets)."""

    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []
        self.enabled = True

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True


def attach(adapter: Adapter, unet: nn.Module, token_embedding: nn.Embedding, weight: float,
           into: Attached | None = None) -> Attached:
    """Hook ``adapter`` at ``weight`` into the U-Net's attention layers and the text tower's token
    embedding; returns (or extends) the handles. Weight 0 attaches nothing."""
    attached = into if into is not None else Attached()
    if weight == 0:
        return attached
    layers = lora_layers(unet)
    for name, (down, up) in adapter.lora_pairs().items():
        if name not in layers:
            raise KeyError(name)

        def lora_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor,
                      down: torch.Tensor = down, up: torch.Tensor = up) -> torch.Tensor | None:
            if not attached.enabled:
                return None
            x = inputs[0]
            return output + weight * F.linear(F.linear(x, down.to(x.dtype)), up.to(x.dtype))

        attached.handles.append(layers[name].register_forward_hook(lora_hook))
    if adapter.vectors is not None and len(adapter.trigger_ids):
        vectors, ids = adapter.vectors, adapter.trigger_ids

        def embedding_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
                           ) -> torch.Tensor | None:
            if not attached.enabled:
                return None
            return replaced(inputs[0], output, ids, vectors, weight)

        attached.handles.append(token_embedding.register_forward_hook(embedding_hook))
    return attached


def replaced(ids: torch.Tensor, embedded: torch.Tensor, trigger_ids: torch.Tensor, vectors: torch.Tensor,
             weight: float) -> torch.Tensor:
    """``embedded`` (B, L, D) of ``ids`` (B, L) with every occurrence of the trigger's pieces
    moved ``weight`` of the way to ``vectors`` (n, D); differentiable in ``vectors``."""
    n, length = len(trigger_ids), ids.shape[1]
    if length < n:
        return embedded
    windows = ids.unfold(1, n, 1)  # (B, L - n + 1, n)
    hits = (windows == trigger_ids.to(ids.device)).all(dim=-1)
    if not bool(hits.any()):
        return embedded
    out = embedded
    v = vectors.to(embedded.device, embedded.dtype)
    for k in range(n):  # the k-th piece of each occurrence
        at = torch.zeros_like(ids, dtype=torch.bool)
        at[:, k:k + length - n + 1] = hits
        out = torch.where(at[..., None], out + weight * (v[k] - out), out)
    return out
