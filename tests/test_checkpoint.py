"""Checkpoints: bit-exact round trip, and one clear error for each kind of bad file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffgen.checkpoint import load_model, read_checkpoint, save_checkpoint, save_model
from diffgen.engine.denoiser import Conditioning
from diffgen.errors import CheckpointError


@pytest.fixture()
def saved(tmp_path, tiny_model):
    path = tmp_path / "model.safetensors"
    digest = save_model(path, tiny_model, extra={"training": {"steps": 3}})
    return path, digest, tiny_model


def test_round_trip_is_bit_exact(saved):
    path, digest, model = saved
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.content_hash == digest
    assert loaded.metadata["training"] == {"steps": 3}
    original = model.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        cond, _ = model.encode_prompts(["a cat", ""])
        assert torch.equal(model.eval().denoiser(x, sigma, cond), loaded.denoiser(x, sigma, cond))


def test_hash_identifies_content(tmp_path, tiny_config):
    tensors = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    h1 = save_checkpoint(tmp_path / "1.safetensors", tensors, tiny_config)
    h2 = save_checkpoint(tmp_path / "2.safetensors", dict(reversed(tensors.items())), tiny_config)
    h3 = save_checkpoint(tmp_path / "3.safetensors", {**tensors, "a": torch.arange(4.0) + 1}, tiny_config)
    assert h1 == h2 != h3


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.safetensors")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"", b"abc", b"\x00" * 100, b"hello world, a text file",
                                     struct.pack("<Q", 10) + b"{not json!" + b"\x00" * 10])
def test_not_safetensors(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_checkpoint(path)


def test_pickle_zip_is_named(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(CheckpointError, match="only safetensors"):
        read_checkpoint(path)


def test_truncated(saved):
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path)


def test_plain_safetensors_is_not_a_diffgen_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a diffgen checkpoint"):
        read_checkpoint(path)


def test_wrong_version(tmp_path, tiny_config):
    path = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={
        "format": "diffgen", "format_version": "99", "config": json.dumps({})})
    with pytest.raises(CheckpointError, match="format version '99'"):
        read_checkpoint(path)


def test_corrupt_weights(saved):
    path = saved[0]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(path)


def test_failed_write_leaves_old_file_and_no_temporaries(saved, tiny_config, monkeypatch):
    import diffgen.checkpoint

    path, digest, _ = saved

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # some bytes reach the temporary file, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(diffgen.checkpoint, "save_file", half_written)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"w": torch.ones(3)}, tiny_config)
    assert read_checkpoint(path)[2]["content_hash"] == digest
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_no_pickle_in_the_package():
    from pathlib import Path

    import diffgen

    for source in Path(diffgen.__file__).parent.glob("*.py"):
        text = source.read_text()
        assert "torch.load(" not in text and "import pickle" not in text, source.name


def test_conditioning_expand_rejects_mismatched_batch():
    cond = Conditioning(torch.zeros(2, 3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError):
        cond.expand(3)
