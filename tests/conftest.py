"""Shared fixtures: the tiny config, a tiny random-weight model, and tiny training runs made once
per session for the tests that only need a trained checkpoint or a reference to compare with.
Helpers (not fixtures) are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from diffgen.config import Config, load_config

from .helpers import ROOT, TRAIN_CONFIG, cli, make_shapes_folder, randomize_zero_params, train_args

# One CPU thread in this process and in the processes it starts (OMP_NUM_THREADS is inherited),
# unless set otherwise: the tiny models gain nothing from a second thread, and on a machine whose
# cores are busy with other work, OpenMP threads waiting for each other's turn made the suite
# several times slower (docs/BENCHMARKS.md, "Test suite").
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    return load_config(ROOT / "configs" / "tiny.toml")


@pytest.fixture()
def tiny_model(tiny_config):
    from diffgen.engine.model import build_model

    torch.manual_seed(0)
    return build_model(tiny_config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A tiny checkpoint whose zero-initialised layers are made non-zero, so images depend on
    the prompt, the seed and every sampler step."""
    from diffgen.checkpoint import save_model
    from diffgen.engine.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config)
    randomize_zero_params(model.denoiser)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(path, model)
    return path


@pytest.fixture()
def shapes_folder(tmp_path) -> Path:
    """A shapes folder of the test's own, free to change."""
    return make_shapes_folder(tmp_path / "shapes")


@pytest.fixture(scope="session")
def shared_shapes(tmp_path_factory) -> Path:
    """The shapes folder that the session's shared runs trained on. Read it, never change it."""
    return make_shapes_folder(tmp_path_factory.mktemp("shared") / "shapes")


@pytest.fixture(scope="session")
def shared_config(tmp_path_factory) -> Path:
    """The quick tiny training config (helpers.TRAIN_CONFIG) as a file. Never change it."""
    path = tmp_path_factory.mktemp("shared-config") / "train.toml"
    path.write_text(TRAIN_CONFIG)
    return path


def _train_once(tmp_path_factory, shapes: Path, config: Path, name: str, steps: int, clip_steps: int) -> Path:
    out = tmp_path_factory.mktemp("shared-runs", numbered=True) / name
    result = cli(*train_args(shapes, out, config, steps=steps, clip_steps=clip_steps))
    assert result.exit_code == 0, result.output
    (out.parent / "stdout.txt").write_text(result.stdout)  # beside the run folder, not in it
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shared_shapes, shared_config) -> Path:
    """The folder of one tiny run, 6 CLIP steps and 40 diffusion steps on ``shared_shapes`` with
    ``shared_config``: a trained checkpoint for ``--init`` and ``--text-encoder``, and the
    uninterrupted reference of the SIGKILL and SIGTERM tests. Read it, never change it."""
    return _train_once(tmp_path_factory, shared_shapes, shared_config, "trained", steps=40, clip_steps=6)


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, shared_shapes, shared_config) -> Path:
    """The folder of one tiny run, 2 CLIP steps and 8 diffusion steps on ``shared_shapes`` with
    ``shared_config``, states at steps 4 and 8: the uninterrupted reference of the exact-resume
    tests. Read it, never change it."""
    return _train_once(tmp_path_factory, shared_shapes, shared_config, "straight", steps=8, clip_steps=2)
