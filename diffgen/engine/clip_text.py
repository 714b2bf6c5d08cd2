"""The CLIP text tower alone, for sampling and encoding without importing open_clip.

``import open_clip`` costs about 2 s of a cold start (it imports torchvision, and through it
torch._dynamo, for one layer class, and timm), while sampling needs only the text transformer and
the BPE tokenizer. ``CLIPTextTower`` has exactly the parameter names and the computation of the
text half of ``open_clip.model.CLIP`` (standard CLIP transformer, causal mask, argmax pooling), so a
diffgen checkpoint's ``text_encoder.clip.*`` weights load into it unchanged and give bit-identical
embeddings (tests/test_clip_text.py compares the two). The image tower stays with open_clip: it is
needed only for training and evaluation, which load the full model.

The tokenizer is open_clip's own ``tokenizer.py``, loaded from its file without running the
package's ``__init__`` (the file imports only the standard library, ftfy, regex, numpy and torch).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections import OrderedDict
from types import ModuleType
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from diffgen.config import Config

# Checkpoint keys (under text_encoder.clip.) that belong to the image tower or the contrastive loss.
IMAGE_TOWER_PREFIXES = ("visual.", "logit_scale", "logit_bias")

_TOKENIZER_MODULE = "diffgen.engine._open_clip_tokenizer"


def tokenizer_module() -> ModuleType:
    """open_clip's tokenizer module: the imported one if open_clip is loaded, else its file alone."""
    if "open_clip" in sys.modules:
        import open_clip.tokenizer

        return open_clip.tokenizer
    if _TOKENIZER_MODULE in sys.modules:
        return sys.modules[_TOKENIZER_MODULE]
    package = importlib.util.find_spec("open_clip")  # locates the package without running it
    if package is None or not package.submodule_search_locations:
        raise ImportError("open_clip is not installed (pip install open-clip-torch)")
    location = f"{list(package.submodule_search_locations)[0]}/tokenizer.py"
    spec = importlib.util.spec_from_file_location(_TOKENIZER_MODULE, location)
    assert spec is not None and spec.loader is not None  # a .py file's location always has both
    module = importlib.util.module_from_spec(spec)
    sys.modules[_TOKENIZER_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_TOKENIZER_MODULE]
        raise
    return module


@functools.lru_cache(maxsize=4)
def simple_tokenizer(context_length: int) -> Any:
    """open_clip's BPE tokenizer for ``context_length``, built once per process (0.1 s each: its
    vocabulary file is decompressed and parsed), shared by every model and data check."""
    return tokenizer_module().SimpleTokenizer(context_length=context_length)


class LayerNorm(nn.LayerNorm):
    """LayerNorm that returns its input's dtype (as open_clip's does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm self-attention + GELU MLP, named as open_clip names them."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask.to(x.dtype))[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks (batch first)."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def get_cast_dtype(self) -> torch.dtype:
        first = cast(ResidualAttentionBlock, self.resblocks[0])
        return cast(nn.Linear, first.mlp.c_fc).weight.dtype

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class CLIPTextTower(nn.Module):
    """The text half of a diffgen CLIP (``cfg.text`` without ``arch``), same names as open_clip."""

    text_pool_type = "argmax"  # the end-of-text token has the largest id, as in CLIP

    def __init__(self, cfg: Config):
        super().__init__()
        t = cfg.text
        self.context_length = t.context_length
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads)
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, t.embed_dim))
        # built on the CPU even under a meta-device context: triu_ on meta imports torch._dynamo
        causal = torch.full((t.context_length, t.context_length), float("-inf"), device="cpu").triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=t.width ** -0.5)


def is_image_tower_key(name: str) -> bool:
    """True for a ``text_encoder.clip.*`` checkpoint key that only the image tower uses."""
    prefix = "text_encoder.clip."
    return name.startswith(prefix) and name[len(prefix):].startswith(IMAGE_TOWER_PREFIXES)
