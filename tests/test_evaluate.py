"""Quality metrics against closed forms, and `diffgen eval` end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from diffgen.cli import app
from diffgen.evaluate import frechet_distance, kernel_inception_distance, prompt_agreement

from .helpers import ROOT, make_shapes_folder


def test_frechet_distance_closed_forms():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen,
                                                                                dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # b = 2a: mu_b = 2 mu_a, S_b = 4 S_a, so FD = |mu_a|^2 + tr(S_a) + 4 tr(S_a) - 4 tr(S_a)
    expected = a.mean(0).square().sum() + torch.cov(a.T).trace()
    assert frechet_distance(a, 2 * a) == pytest.approx(expected.item(), rel=1e-6)
    shift = torch.zeros(6, dtype=torch.float64)
    shift[0] = 3.0
    assert frechet_distance(a, a + shift) == pytest.approx(9.0, rel=1e-6)


def test_kid_matches_its_definition():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 3, generator=gen), torch.randn(9, 3, generator=gen) + 0.5

    def k(x, y):
        return (float(x @ y) / 3 + 1) ** 3

    aa = sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    bb = sum(k(b[i], b[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    ab = sum(k(a[i], b[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert kernel_inception_distance(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-6)


def test_prompt_agreement():
    text = {"cat": torch.tensor([1.0, 0.0]), "dog": torch.tensor([0.0, 1.0])}
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    result = prompt_agreement(images, ["cat", "dog", "dog"], text)
    assert result["retrieval_top1"] == pytest.approx(2 / 3)
    assert result["clip_score"] == pytest.approx(100 * 2 / 3)
    assert result["retrieval_chance"] == 0.5


def test_eval_command_writes_table_json_and_plot(tiny_checkpoint, tmp_path):
    data = make_shapes_folder(tmp_path / "shapes", count=120, size=8)
    out = tmp_path / "eval"
    prompts = tmp_path / "heldout.txt"
    prompts.write_text("a red circle\na blue square\n")
    result = CliRunner().invoke(app, ["eval", str(data), "-c", str(tiny_checkpoint), "--images", "10",
                                      "--steps", "2,4", "--samplers", "euler,dpmpp-2m", "-g", "1,2",
                                      "-o", str(out), "--device", "cpu", "-f", str(prompts)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "eval.json").read_text())
    assert len(saved["rows"]) == 2 * 2 * 2
    assert saved["floor"]["images"] == 10 and saved["floor"]["fd"] >= 0
    assert all(r["fd"] >= 0 and 0 <= r["retrieval_top1"] <= 1 for r in saved["rows"])
    assert "real vs real (floor)" in (out / "eval.md").read_text()
    assert (out / "eval.png").exists()
    held = saved["prompt_sets"][str(prompts)]
    assert held["prompts"] == 2 and held["images"] == 8 and held["retrieval_chance"] == 0.5
    assert "CLIP image tower" in result.stdout
    assert "warning: 10 images for 32-dimensional features" in result.stderr  # FD needs more images
    assert "eval: 8/8" in result.stderr  # progress over the cells


def test_eval_refuses_a_folder_too_small_and_bad_guidance(tiny_checkpoint, shapes_folder):
    result = CliRunner().invoke(app, ["eval", str(shapes_folder), "-c", str(tiny_checkpoint)])
    assert result.exit_code == 2 and "too few images" in result.output
    result = CliRunner().invoke(app, ["eval", str(shapes_folder), "-c", str(tiny_checkpoint), "-g", "nan"])
    assert result.exit_code == 2 and "guidance" in result.output


def test_sweep_series_follows_what_varies():
    from diffgen.evaluate import sweep_series

    def row(sampler, steps, guidance, fd):
        return {"sampler": sampler, "steps": steps, "guidance": guidance, "fd": fd}

    floor = {"fd": 0.1}
    by_guidance = {"floor": floor, "rows": [row("euler", 20, 3.0, 0.3), row("euler", 20, 1.0, 0.5),
                                             row("euler", 20, 2.0, 0.2)]}
    series, axis = sweep_series(by_guidance)
    assert axis == "guidance"
    assert series["euler 20 steps"] == ([1.0, 2.0, 3.0], [0.5, 0.2, 0.3])
    assert series["real vs real"] == ([1.0, 2.0, 3.0], [0.1, 0.1, 0.1])
    by_steps = {"floor": floor, "rows": [row("heun", 10, 3.0, 0.4), row("heun", 5, 3.0, 0.6),
                                          row("euler", 5, 3.0, 0.7)]}
    series, axis = sweep_series(by_steps)
    assert axis == "steps"
    assert series["heun g=3"] == ([5, 10], [0.6, 0.4]) and series["euler g=3"] == ([5], [0.7])
    assert series["real vs real"] == ([5, 10], [0.1, 0.1])


def test_eval_refuses_a_folder_whose_held_out_split_differs_from_training(tmp_path):
    data = make_shapes_folder(tmp_path / "shapes", count=120, size=8)
    run = tmp_path / "run"
    trained = CliRunner().invoke(app, ["train", str(data), "-o", str(run), "--config", str(ROOT / "configs/tiny.toml"),
                                       "--steps", "2", "--clip-steps", "1", "--device", "cpu", "-q"])
    assert trained.exit_code == 0, trained.output
    checkpoint = str(run / "model.safetensors")
    args = ["--images", "10", "--steps", "1", "--device", "cpu", "--json"]
    assert CliRunner().invoke(app, ["eval", str(data), "-c", checkpoint, *args]).exit_code == 0
    (data / "img119.png").unlink()  # one image fewer: another split
    (data / "img119.txt").unlink()
    result = CliRunner().invoke(app, ["eval", str(data), "-c", checkpoint, *args])
    assert result.exit_code == 2 and "held-out split differs" in result.output
