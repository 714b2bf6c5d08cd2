"""Every kind of training run resumes exactly: 8 steps straight, and 4 steps then ``--resume`` for
the other 4, end with the same weights. One case per training feature (a high-noise share, the
caption contrast, the grounding loss and its high-noise pass, the layout bias, text-tower tuning
from ``--init``), each followed by its own checks on the straight run's metrics and on a run without
the feature. The plain run resumes exactly in test_train.py (against conftest's ``straight_run``,
which is also the high-noise case's run without the share) and test_signals.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from diffgen.training.metrics import RunLog

from .helpers import (
    cli,
    diffusion_metrics,
    make_shapes_folder,
    max_difference,
    metrics,
    train_args,
    train_config,
    weights,
    with_negatives,
    with_pair_regions,
    with_regions,
)


@dataclass
class Case:
    """A run to resume: its config (TOML), its data folder (made from a fresh shapes folder),
    options for its first run (``--init``), the tolerance of the comparison, and the checks that
    follow on the straight run."""

    config: str
    data: Callable[[Path], Path] = lambda folder: folder
    init: bool = False
    tolerance: float = 1e-5
    then: Callable[..., None] = lambda **_: None


def loss_terms_logged_apart(term: str, weight: float, every_step: bool):
    """metrics.jsonl logs the loss's two terms apart (loss = denoising + weight x term), and the loss
    curve draws the term as a line of its own."""
    def check(straight: Path, **_) -> None:
        rows = diffusion_metrics(straight)
        assert len(rows) == 8
        if every_step:
            assert all(0 < r[term] <= 1 for r in rows)
        else:
            assert any(r[term] > 0 for r in rows)
        assert all(math.isclose(r["loss"], r["denoising"] + weight * r[term], rel_tol=1e-5) for r in rows)
        curves = RunLog(straight, enabled=True, resume_from=("diffusion", 8)).curves()
        assert curves[f"diffusion {term}"] == (list(range(1, 9)), [r[term] for r in rows])
    return check


def high_noise_changes_the_losses(straight: Path, straight_run: Path, **_) -> None:
    # the shares' draws are far noisier, so the loss differs from the same run without them
    losses = [[r["loss"] for r in diffusion_metrics(run)] for run in (straight, straight_run)]
    assert losses[0] != losses[1]


def contrast_checks(straight: Path, folder: Path, tmp_path: Path, **_) -> None:
    loss_terms_logged_apart("contrast", 1.0, every_step=False)(straight)
    # the contrast changed the training: the same run without it ends elsewhere
    plain = tmp_path / "plain.toml"
    plain.write_text(train_config(denoiser={"p_mean": 0.0}))
    other = tmp_path / "other"
    assert cli(*train_args(folder, other, plain, steps=8, clip_steps=2)).exit_code == 0
    assert not any("contrast" in row for row in metrics(other))
    assert "diffusion contrast" not in RunLog(other, enabled=True, resume_from=("diffusion", 8)).curves()
    a, c = weights(straight / "model.safetensors"), weights(other / "model.safetensors")
    assert max_difference(a, c, "denoiser.") > 1e-4


def layout_bias_checks(straight: Path, folder: Path, tmp_path: Path, **_) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text(train_config())
    assert cli(*train_args(folder, tmp_path / "plain", plain, steps=8, clip_steps=2)).exit_code == 0
    # the same batches, noise and starting weights: the transformer blocks' output layers start at
    # zero, so the first step's loss is the same with and without the bias, and the runs' weights
    # differ only because the bias moved the attention's gradients
    assert diffusion_metrics(tmp_path / "plain")[0]["loss"] == pytest.approx(diffusion_metrics(straight)[0]["loss"],
                                                                            rel=1e-6)
    a, b = weights(tmp_path / "plain" / "model.safetensors"), weights(straight / "model.safetensors")
    moved = [(a[k].float() - b[k].float()).abs().max().item() for k in a if ".cross_attn.to_v." in k]
    assert moved and min(moved) > 1e-4


CASES = {
    "high_noise_share": Case(train_config(denoiser={"high_noise_share": 0.5, "high_noise_min_sigma": 10.0}),
                             then=high_noise_changes_the_losses),
    "contrast": Case(train_config(train={"negative_weight": 1.0}, denoiser={"p_mean": 0.0}), with_negatives,
                     then=contrast_checks),
    "grounding": Case(train_config(train={"grounding_weight": 0.5}), with_regions,
                      then=loss_terms_logged_apart("grounding", 0.5, every_step=True)),
    # with a floor of sigma 50 the training draws (ln sigma ~ N(-1.2, 1.2^2)) almost never count;
    # the pass's images, drawn in [50, 80], carry the term on every step
    "grounding_pass": Case(train_config(train={"grounding_weight": 0.5, "grounding_min_sigma": 50.0,
                                               "grounding_pass_images": 4}), with_regions,
                           then=loss_terms_logged_apart("grounding", 0.5, every_step=True)),
    "layout_bias": Case(train_config(train={"layout_bias": 6.0}), with_pair_regions, then=layout_bias_checks),
    # train.text_lr_scale: the text tower trains with the U-Net from a trained checkpoint
    "text_tuning": Case(train_config(train={"text_lr_scale": 1.0, "ema_warmup": False}), init=True, tolerance=1e-6),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_run_trains_and_resumes_exactly(name, tmp_path, straight_run, trained_run):
    case = CASES[name]
    config = tmp_path / "train.toml"
    config.write_text(case.config)
    init = ["--init", str(trained_run / "model.safetensors")] if case.init else []
    folder = case.data(make_shapes_folder(tmp_path / "shapes"))
    straight = tmp_path / "straight"
    result = cli(*train_args(folder, straight, config, steps=8, clip_steps=2), *init)
    assert result.exit_code == 0, result.output
    halves = tmp_path / "halves"
    first = cli(*train_args(folder, halves, config, steps=4, clip_steps=2), *init)
    assert first.exit_code == 0, first.output
    resumed = cli(*train_args(folder, halves, config, steps=8, clip_steps=2), "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = weights(straight / "model.safetensors"), weights(halves / "model.safetensors")
    assert a.keys() == b.keys()
    assert max_difference(a, b) < case.tolerance
    assert [r["step"] for r in diffusion_metrics(halves)] == list(range(1, 9))
    case.then(straight=straight, folder=folder, tmp_path=tmp_path, straight_run=straight_run)

