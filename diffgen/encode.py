"""What the text encoder sees: token counts, pooled norms, cosine similarities, saved tensors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from diffgen.engine.model import DiffusionModel
from diffgen.engine.text import TextEncoding


@dataclass(frozen=True)
class EncodeReport:
    """The encoding of some prompts and the numbers the CLI shows about them."""

    prompts: list[str]
    encoding: TextEncoding
    pooled_norms: list[float]
    cosine: list[list[float]]  # between pooled embeddings, (N, N)
    context_length: int


def encode_report(model: DiffusionModel, prompts: list[str]) -> EncodeReport:
    """Encode ``prompts`` with the model's text encoder and summarise them."""
    with torch.inference_mode():
        encoding = model.text_encoder.encode(prompts, weighted=True)
    pooled = encoding.pooled.float().cpu()
    unit = F.normalize(pooled, dim=-1)
    return EncodeReport(
        prompts=list(prompts),
        encoding=encoding,
        pooled_norms=pooled.norm(dim=-1).tolist(),
        cosine=(unit @ unit.T).tolist(),
        context_length=model.text_encoder.context_length,
    )


def save_encoding(path: Path, report: EncodeReport, model: DiffusionModel) -> None:
    """Write token ids, per-token states and pooled embeddings to safetensors, atomically; the
    prompts and the encoder identity go in the metadata."""
    from safetensors.torch import save_file

    from diffgen.config import config_to_dict
    from diffgen.fileio import atomic_write

    enc = report.encoding
    tensors = {"ids": enc.ids.cpu(), "tokens": enc.tokens.float().cpu().contiguous(),
               "pooled": enc.pooled.float().cpu().contiguous()}
    metadata = {
        "prompts": json.dumps(report.prompts),
        "num_tokens": json.dumps(enc.num_tokens),
        "model_hash": model.content_hash or "",
        "text_config": json.dumps(config_to_dict(model.config)["text"]),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
