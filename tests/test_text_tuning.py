"""`train.text_lr_scale`: the text tower trains with the U-Net, ships its EMA, and runs under DDP;
the image tower stays as it was. That it resumes exactly: test_resume.py ("text_tuning")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from diffgen.checkpoint import load_model
from diffgen.config import config_from_dict, config_to_dict, load_config
from diffgen.engine.clip_text import is_image_tower_key
from diffgen.errors import ConfigError
from diffgen.state import load_latest_state

from .helpers import ROOT, cli, free_port, train_args, train_config, weights


@pytest.fixture()
def tuned_config(tmp_path):
    path = tmp_path / "text-tuned.toml"
    path.write_text(train_config(train={"text_lr_scale": 1.0, "ema_warmup": False}))
    return path


@pytest.fixture()
def first_model(trained_run):
    """A trained checkpoint whose text tower was frozen in its diffusion stage (the session's run)."""
    return trained_run / "model.safetensors"


def state_path(run):
    """The run's newest diffusion state (tensors file)."""
    return sorted((run / "state").glob("state-diffusion-*.safetensors"))[-1]


def _text_keys(weights):
    return [k for k in weights if k.startswith("text_encoder.") and not is_image_tower_key(k)]


def test_the_text_tower_trains_and_ships_its_average(shapes_folder, tmp_path, tuned_config, first_model):
    out = tmp_path / "tuned"
    result = cli(*train_args(shapes_folder, out, tuned_config, steps=6), "--init", str(first_model))
    assert result.exit_code == 0, result.output
    base, tuned = weights(first_model), weights(out / "model.safetensors")
    text_keys = _text_keys(base)
    image_keys = [k for k in base if is_image_tower_key(k)]
    assert text_keys and image_keys
    assert all(torch.equal(tuned[k], base[k]) for k in image_keys)
    moved = [k for k in text_keys if not torch.equal(tuned[k], base[k])]
    assert len(moved) == len(text_keys)  # every text-tower tensor gets a gradient
    # the checkpoint holds the EMA (decay 0.995, six steps: about 3% of the way), not the raw weights
    state = load_latest_state(out / "state")
    raw = {k: state.tensors[f"model.{k}"] for k in text_keys}
    ema = {k: state.tensors[f"ema_text.{k[len('text_encoder.'):]}"] for k in text_keys}
    assert all(torch.equal(tuned[k], ema[k]) for k in text_keys)
    # the state samples like the checkpoint: with the tower's average, not its raw weights
    from_state = load_model(state_path(out), image_tower=True).state_dict()
    assert all(torch.equal(from_state[k], ema[k]) for k in text_keys)
    to_raw = max((raw[k] - base[k]).abs().max().item() for k in text_keys)
    to_ema = max((ema[k] - base[k]).abs().max().item() for k in text_keys)
    assert 0 < to_ema < 0.1 * to_raw
    # the optimizer's second group runs at the scaled rate
    groups = json.loads(state_path(out).with_suffix(".json").read_text())["optimizer_groups"]
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 1.0] and len(groups[1]["params"]) == len(text_keys)


def test_the_text_tower_learns_at_its_fraction_of_the_rate(shapes_folder, tmp_path, first_model):
    config_file = tmp_path / "quarter.toml"
    config_file.write_text(train_config(train={"text_lr_scale": 0.25, "ema_warmup": False}))
    out = tmp_path / "quarter"
    result = cli(*train_args(shapes_folder, out, config_file, steps=3), "--init", str(first_model))
    assert result.exit_code == 0, result.output
    unet_group, text_group = json.loads(state_path(out).with_suffix(".json").read_text())["optimizer_groups"]
    assert text_group["lr_scale"] == 0.25 and unet_group["lr"] > 0
    assert text_group["lr"] == pytest.approx(0.25 * unet_group["lr"], rel=1e-9)


@pytest.mark.slow
def test_two_process_ddp_keeps_the_text_towers_identical(shapes_folder, tmp_path, tuned_config, first_model):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "diffgen",
           *train_args(shapes_folder, out, tuned_config, steps=3), "--init", str(first_model)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["ranks_identical"] is True  # the whole model, text tower included
    tuned, base = weights(out / "model.safetensors"), weights(first_model)
    assert any(not torch.equal(tuned[k], base[k]) for k in _text_keys(base))


def test_a_negative_text_lr_scale_is_a_config_error():
    data = config_to_dict(load_config(ROOT / "configs" / "tiny.toml"))
    data["train"]["text_lr_scale"] = -0.1
    with pytest.raises(ConfigError, match="text_lr_scale"):
        config_from_dict(data)
