"""`diffgen noise`: the forward process drawn from one noise image, and the one-step estimates."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from diffgen.checkpoint import load_model
from diffgen.cli import app
from diffgen.sampling.forward import noisy_versions


def test_every_level_adds_the_same_noise_image_scaled_by_sigma():
    x0 = torch.rand(3, 8, 8) * 2 - 1
    x = noisy_versions(x0, [0.5, 2.0, 8.0], seed=3)
    eps = (x[0] - x0) / 0.5
    assert torch.allclose((x[1] - x0) / 2.0, eps, atol=1e-5) and torch.allclose((x[2] - x0) / 8.0, eps, atol=1e-5)
    assert torch.equal(noisy_versions(x0, [0.5], seed=3)[0], x[0])  # one level or many: the same noise
    assert abs(eps.std().item() - 1) < 0.2


def test_at_a_tiny_sigma_the_estimate_is_the_input(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    x0 = torch.rand(1, 3, 8, 8) * 2 - 1
    cond, _ = model.encode_prompts(["a red square"])
    with torch.inference_mode():
        estimate = model.denoiser(x0 + 1e-4 * torch.randn(x0.shape), torch.tensor([1e-4]), cond)
    assert (estimate - x0).abs().max().item() < 1e-3  # c_skip -> 1, c_out -> 0 (EDM preconditioning)


def test_noise_command_draws_one_row_per_kind(tiny_checkpoint, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(source)
    plain, both = tmp_path / "plain.png", tmp_path / "both.png"
    args = ["noise", str(source), "--sigmas", "0.5,5,50", "-c", str(tiny_checkpoint)]
    assert CliRunner().invoke(app, [*args, "-o", str(plain)]).exit_code == 0
    result = CliRunner().invoke(app, [*args, "-o", str(both), "--denoise", "--prompt", "a red square"])
    assert result.exit_code == 0, result.output
    with Image.open(plain) as a, Image.open(both) as b:
        assert a.width == b.width and math.isclose(b.height, 2 * a.height, rel_tol=0.05)
    bad = CliRunner().invoke(app, ["noise", str(source), "--sigmas", "1,-2", "-o", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "--sigmas must be positive" in bad.output
