"""The CLIP text encoder: shapes, determinism, truncation, the empty prompt, offline failures."""

from __future__ import annotations

import time

import pytest
import torch

from diffgen.engine import text
from diffgen.engine.text import build_text_encoder, load_pretrained_clip
from diffgen.errors import InputError, TextEncoderError


@pytest.fixture()
def encoder(tiny_config):
    torch.manual_seed(0)
    return build_text_encoder(tiny_config).eval()


def test_shapes(encoder, tiny_config):
    enc = encoder.encode(["a red apple", "a panda on a bike"])
    assert enc.tokens.shape == (2, 77, tiny_config.text.width)
    assert enc.pooled.shape == (2, tiny_config.text.embed_dim)
    assert enc.ids.shape == (2, 77)
    assert enc.truncated == [False, False]
    assert encoder.token_dim == tiny_config.text.width
    assert encoder.pooled_dim == tiny_config.text.embed_dim


def test_deterministic_and_independent_of_batch(encoder):
    with torch.no_grad():
        alone = encoder.encode(["a green apple"])
        batch = encoder.encode(["a cat", "a green apple", ""])
        again = encoder.encode(["a green apple"])
    assert torch.equal(alone.tokens, again.tokens) and torch.equal(alone.pooled, again.pooled)
    assert torch.allclose(batch.tokens[1], alone.tokens[0], atol=1e-5)
    assert torch.allclose(batch.pooled[1], alone.pooled[0], atol=1e-5)


def test_different_prompts_differ(encoder):
    with torch.no_grad():
        enc = encoder.encode(["a red apple", "a blue car"])
    assert not torch.allclose(enc.pooled[0], enc.pooled[1])


def test_truncation_is_reported(encoder):
    long_prompt = " ".join(["panda"] * 100)
    enc = encoder.encode(["short", long_prompt])
    assert enc.truncated == [False, True]
    assert enc.num_tokens[1] == 102  # start + 100 words + end
    eot = encoder.tokenizer.eot_token_id
    assert enc.ids[1, -1].item() == eot  # truncated prompts still end with the end marker


def test_empty_prompt_is_accepted(encoder):
    enc = encoder.encode([""])
    tok = encoder.tokenizer
    assert enc.ids[0, :2].tolist() == [tok.sot_token_id, tok.eot_token_id]
    assert enc.num_tokens == [2]
    assert torch.isfinite(enc.pooled).all()


def test_offline_download_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setattr(text, "HF_HUB_HOST", "diffgen-offline-test.invalid")
    monkeypatch.setattr(text, "_cached_weights", lambda cfg: None)
    start = time.monotonic()
    with pytest.raises(TextEncoderError, match="unreachable"):
        load_pretrained_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert time.monotonic() - start < 10


def test_unknown_arch_and_tag_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unknown open_clip architecture"):
        load_pretrained_clip("no-such-arch", "")
    with pytest.raises(InputError, match="neither a local file nor a pretrained tag"):
        load_pretrained_clip("ViT-B-32", "no-such-tag")
    with pytest.raises(InputError, match="not found"):
        load_pretrained_clip("ViT-B-32", str(tmp_path / "weights.safetensors"))
