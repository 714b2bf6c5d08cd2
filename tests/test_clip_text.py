"""The text-only CLIP tower: the same numbers as open_clip's CLIP, and a start that skips open_clip."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from diffgen.checkpoint import CheckpointError, load_model, save_checkpoint
from diffgen.engine.clip_text import CLIPTextTower, is_image_tower_key
from diffgen.engine.text import TextEncoder, build_clip

PROMPTS = ["a red square", "", "a blue circle next to a green triangle " * 12]


def test_text_tower_matches_open_clip_bit_for_bit(tiny_config):
    torch.manual_seed(0)
    clip = build_clip(tiny_config)
    with torch.no_grad():  # open_clip initialises some weights to zero or one; make every weight count
        for p in clip.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    tower = CLIPTextTower(tiny_config)
    text_weights = {k: v for k, v in clip.state_dict().items() if not is_image_tower_key(f"text_encoder.clip.{k}")}
    tower.load_state_dict(text_weights)  # strict: the same names, nothing more, nothing less
    full = TextEncoder(clip, tiny_config.text.context_length).eval()
    light = TextEncoder(tower, tiny_config.text.context_length).eval()
    with torch.no_grad():
        a, b = full.encode(PROMPTS, weighted=True), light.encode(PROMPTS, weighted=True)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)
        assert torch.equal(clip.encode_text(a.ids), b.pooled)
        assert a.truncated == b.truncated == [False, False, True]


def test_checkpoint_loads_without_its_image_tower(tiny_checkpoint):
    full = load_model(tiny_checkpoint)
    light = load_model(tiny_checkpoint, image_tower=False)
    assert not hasattr(light.text_encoder.clip, "visual") and hasattr(full.text_encoder.clip, "visual")
    assert light.content_hash == full.content_hash and light.file_sha256 == full.file_sha256
    assert light.parameter_counts()["image"] == 0
    assert light.parameter_counts()["text"] == full.parameter_counts()["text"]
    with torch.no_grad():
        a, b = full.text_encoder.encode(PROMPTS), light.text_encoder.encode(PROMPTS)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)


def test_text_only_load_still_checks_the_text_weights(tiny_checkpoint, tmp_path):
    from diffgen.checkpoint import read_checkpoint

    tensors, config, _ = read_checkpoint(tiny_checkpoint)
    del tensors["text_encoder.clip.ln_final.bias"]
    path = tmp_path / "broken.safetensors"
    save_checkpoint(path, tensors, config)  # a valid hash over the incomplete weights
    with pytest.raises(CheckpointError, match="missing weights text_encoder.clip.ln_final.bias"):
        load_model(path, image_tower=False)


def test_sampling_imports_neither_open_clip_nor_dynamo(tiny_checkpoint):
    """The cold-start guard: open_clip (torchvision, timm) and torch._dynamo cost ~3 s per start."""
    code = (
        "import sys, diffgen\n"
        f"diffgen.load({str(tiny_checkpoint)!r}, device='cpu').sample('a red square', steps=2, seed=0)\n"
        "print(sorted(m for m in ('open_clip', 'torchvision', 'timm', 'torch._dynamo') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
