"""The distilled few-step sampler (diffgen train --distill, sample --fast, Model.sample(fast=True)):
the consistency function against exact answers for Gaussian data, the student's start, a few
distillation steps, the student file, exact resume, --fast replay and its refusals, and the
image-editing, layout and prompt-weight paths on the tiny model.

For x0 ~ N(mu, s^2) per pixel, guidance mixes two such denoisers (means mu_c, mu_u) into the ideal
denoiser of N(mu_w, s^2), mu_w = mu_u + w (mu_c - mu_u), whose probability-flow ODE carries x at
sigma to mu_w + (x - mu_w) sqrt(s^2 + sigma'^2) / sqrt(s^2 + sigma^2) at sigma': the exact
consistency function is that map to sigma' = sigma_min."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from diffgen.engine.consistency import (
    Student,
    consistency_loss,
    consistency_scalings,
    consistency_sigmas,
    distillation_grid,
    guided_denoiser,
    ode_step,
    sample_consistency,
    student_denoiser,
)
from diffgen.engine.denoiser import Conditioning
from diffgen.engine.samplers import seeded_noise_sampler

from .helpers import GAUSSIAN_S as S
from .helpers import cli, make_shapes_folder, one_error_line, randomize_zero_params, weights

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
MU_C, MU_U = 0.3, -0.2  # the conditional and unconditional data means


def mean_of(w: torch.Tensor) -> torch.Tensor:
    return (MU_U + w * (MU_C - MU_U))[:, None]


def exact_f(x: torch.Tensor, sigma: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The exact consistency function of the guided Gaussian model: x at sigma -> the ODE's end."""
    mu = mean_of(w)
    return mu + (x - mu) * math.sqrt(S**2 + SIGMA_MIN**2) / (S**2 + sigma[:, None] ** 2).sqrt()


def gaussian_model(x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """A conditional ideal denoiser: rows whose pooled flag is 1 denoise N(mu_c, s^2), others N(mu_u, s^2)."""
    mu = MU_U + cond.pooled[:, :1].to(x) * (MU_C - MU_U)
    s2 = sigma[:, None].to(x) ** 2
    return (S**2 * x + s2 * mu) / (S**2 + s2)


def flags(value: float, batch: int) -> Conditioning:
    return Conditioning(torch.zeros(batch, 1, 1), torch.full((batch, 1), value))


def test_the_boundary_identity_holds_exactly(tiny_model):
    x = torch.randn(3, 3, 8, 8)
    c_skip, c_out, _, _ = consistency_scalings(torch.full((3,), SIGMA_MIN), 0.5, SIGMA_MIN, x)
    assert torch.equal(c_skip, torch.ones_like(c_skip)) and torch.equal(c_out, torch.zeros_like(c_out))
    c_skip, c_out, c_in, c_noise = consistency_scalings(torch.tensor([1.0]), 0.5, SIGMA_MIN, x)
    assert c_skip.item() == pytest.approx(0.25 / (0.998**2 + 0.25))
    assert c_out.item() == pytest.approx(0.5 * 0.998 / math.sqrt(1.25))
    assert c_in.item() == pytest.approx(1 / math.sqrt(1.25)) and c_noise.item() == 0.0
    randomize_zero_params(tiny_model.denoiser)
    student = Student.of_teacher(tiny_model.denoiser)
    randomize_zero_params(student.guidance)  # a trained-looking student: the identity holds for any network
    cond = Conditioning(torch.randn(3, 77, 32), torch.randn(3, 32))
    assert torch.equal(student(x, SIGMA_MIN, cond, 3.0), x)


def test_the_student_starts_as_the_teachers_conditional_branch_for_every_guidance_scale(tiny_model):
    randomize_zero_params(tiny_model.denoiser)
    teacher = tiny_model.denoiser
    student = Student.of_teacher(teacher)
    cond = Conditioning(torch.randn(2, 77, 32), torch.randn(2, 32))
    x_in, c_noise = torch.randn(2, 3, 8, 8), torch.tensor([-1.0, 0.7])
    plain = teacher.net(x_in, c_noise, cond.tokens, cond.pooled)
    for w in (0.0, 1.0, 3.0, 7.5):
        assert torch.equal(student.raw(x_in, c_noise, cond, torch.full((2,), w)), plain)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 20.0])
    c_skip, c_out, c_in, c_noise = consistency_scalings(sigma, teacher.sigma_data, SIGMA_MIN, x)
    wanted = c_skip * x + c_out * teacher.net(c_in * x, c_noise, cond.tokens, cond.pooled)
    assert torch.allclose(student(x, sigma, cond, 3.0), wanted, atol=1e-6)
    # EDM's coefficients differ from these by (sigma - sigma_min) for sigma: the teacher's D, nearly
    assert torch.allclose(student(x, sigma, cond, 3.0), teacher(x, sigma, cond), atol=0.02)


def test_guidance_per_row_is_classifier_free_guidance_in_one_forward():
    calls = []

    def model(x, sigma, cond):
        calls.append(x.shape[0])
        return gaussian_model(x, sigma, cond)

    x, sigma, w = torch.randn(4, 5), torch.full((4,), 2.0), torch.tensor([0.0, 1.0, 3.0, 6.0])
    got = guided_denoiser(model, flags(1.0, 1), flags(0.0, 1), w)(x, sigma)
    mu = mean_of(w)
    assert torch.allclose(got, (S**2 * x + 4 * mu) / (S**2 + 4), atol=1e-6) and calls == [8]


def test_a_teacher_step_follows_the_exact_ode_at_its_order():
    x = MU_C + torch.randn(256, 4, dtype=torch.float64)
    sigma = torch.full((256,), 1.0, dtype=torch.float64)

    def denoise(v, s):
        return gaussian_model(v, s, flags(1.0, v.shape[0]))

    def error(solver: str, step: float) -> float:
        exact = MU_C + (x - MU_C) * math.sqrt(S**2 + (1 - step) ** 2) / math.sqrt(S**2 + 1)
        return (ode_step(denoise, x, sigma, sigma - step, solver) - exact).abs().max().item()

    for solver, order in (("euler", 1), ("heun", 2)):  # one step's error shrinks as step^(order + 1)
        halved = [math.log2(error(solver, h) / error(solver, h / 2)) for h in (0.1, 0.05)]
        assert all(abs(m - order - 1) < 0.3 for m in halved), (solver, halved)


def test_the_exact_consistency_function_is_consistent_up_to_the_teachers_step_error():
    """The loss of the exact f is only the teacher step's error: it shrinks at the solver's local
    order as the grid refines, while a function that is not consistent (the teacher's own D, an
    estimate that changes with sigma) keeps a loss that only halves."""
    gen = torch.Generator().manual_seed(0)
    batch, w = 512, torch.linspace(1, 6, 512, dtype=torch.float64)
    x0 = mean_of(w) + S * torch.randn(batch, 16, generator=gen, dtype=torch.float64)
    noise = torch.randn(batch, 16, generator=gen, dtype=torch.float64)
    teacher = guided_denoiser(gaussian_model, flags(1.0, 1), flags(0.0, 1), w)

    def exact(v, s):
        return exact_f(v, s, w)

    def loss(f, levels: int, solver: str) -> float:
        grid = distillation_grid(levels, SIGMA_MIN, SIGMA_MAX)
        n = torch.randint(levels, (batch,), generator=torch.Generator().manual_seed(1))
        return consistency_loss(f, f, teacher, x0, noise, grid[n], grid[n + 1], solver, c=0.0).mean().item()

    def halvings(f, solver: str) -> list[float]:
        losses = [loss(f, levels, solver) for levels in (20, 40, 80)]
        return [math.log2(a / b) for a, b in zip(losses, losses[1:])]

    assert all(m > 2.5 for m in halvings(exact, "heun"))
    assert all(1.5 < m < 2.5 for m in halvings(exact, "euler"))
    assert all(m < 1.3 for m in halvings(teacher, "heun"))
    assert loss(exact, 20, "heun") < 0.05 * loss(teacher, 20, "heun")


def test_consistency_levels_split_the_ramp_and_land_on_the_grid():
    grid = distillation_grid(20, SIGMA_MIN, SIGMA_MAX)
    assert len(grid) == 21 and grid[0] == SIGMA_MAX and grid[-1] == pytest.approx(SIGMA_MIN)
    for k in (1, 2, 4, 5):
        levels = consistency_sigmas(k, SIGMA_MIN, SIGMA_MAX)
        assert len(levels) == k + 1 and levels[-1] == 0 and levels[0] == SIGMA_MAX
        assert torch.allclose(levels[:-1], grid[::20 // k][:k])
        assert (levels[:-1].diff() < 0).all()


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_with_the_exact_function_draws_the_data(steps):
    w = torch.full((20000,), 3.0, dtype=torch.float64)
    gens = [torch.Generator().manual_seed(k) for k in range(4)]
    x = SIGMA_MAX * torch.randn(20000, 1, dtype=torch.float64, generator=gens[0])
    calls = []
    out = sample_consistency(lambda v, s: exact_f(v, s, w), x, consistency_sigmas(steps, SIGMA_MIN, SIGMA_MAX),
                             lambda s, n: torch.randn(20000, 1, dtype=torch.float64, generator=gens[1]),
                             lambda info: calls.append(info["sigma"]))
    assert len(calls) == steps and calls[0] == SIGMA_MAX
    mu = MU_U + 3 * (MU_C - MU_U)
    assert out.mean().item() == pytest.approx(mu, abs=0.02) and out.std().item() == pytest.approx(S, rel=0.02)


def test_seeded_consistency_sampling_is_the_same_whatever_the_batch(tiny_model):
    randomize_zero_params(tiny_model.denoiser)
    student = Student.of_teacher(tiny_model.denoiser).eval()
    cond = Conditioning(torch.randn(1, 77, 32), torch.randn(1, 32))
    levels = consistency_sigmas(3, SIGMA_MIN, SIGMA_MAX)

    def draw(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        x = torch.stack([torch.randn(3, 8, 8, generator=g) for g in gens]) * SIGMA_MAX
        with torch.no_grad():
            return sample_consistency(student_denoiser(student, cond, 3.0), x, levels,
                                      seeded_noise_sampler(gens, x))

    both, alone = draw([5, 6]), draw([6])
    assert torch.allclose(both[1], alone[0], atol=1e-5) and not torch.allclose(both[0], both[1])


def test_a_few_distillation_steps_reduce_the_consistency_loss(tiny_model):
    import copy

    torch.manual_seed(0)
    randomize_zero_params(tiny_model.denoiser)
    teacher = tiny_model.denoiser.requires_grad_(False)
    student = Student.of_teacher(teacher).requires_grad_(True)
    target = copy.deepcopy(student).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 3, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(8, 3, 8, 8, generator=gen)
    cond, uncond = Conditioning(torch.randn(8, 77, 32, generator=gen), torch.randn(8, 32, generator=gen)), \
        Conditioning(torch.zeros(1, 77, 32), torch.zeros(1, 32))
    w = torch.linspace(1, 6, 8)
    grid = distillation_grid(20, SIGMA_MIN, SIGMA_MAX)
    n = torch.arange(8) * 2 + 2
    high, low = grid[n].float(), grid[n + 1].float()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    seen = []
    for _ in range(12):
        loss = consistency_loss(student_denoiser(student, cond, w), student_denoiser(target, cond, w),
                                guided_denoiser(teacher, cond, uncond, w), x0, noise, high, low).mean()
        seen.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(target.parameters()), list(student.parameters()), 0.05)
    assert seen[-1] < 0.7 * seen[0], seen


# --- the command line: train --distill, sample --fast ---------------------------------------------------

def distill(data: Path, out: Path, *extra: str):
    return cli("train", str(data), "--distill", "-o", str(out), "--device", "cpu", "-q", *extra)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """A 6-step student of the tiny checkpoint, on the shapes folder."""
    root = tmp_path_factory.mktemp("distill")
    data = make_shapes_folder(root / "shapes")
    result = distill(data, root / "run", "--init", str(tiny_checkpoint), "--steps", "6")
    assert result.exit_code == 0, result.output
    return {"data": data, "run": root / "run", "student": root / "run" / "student.safetensors"}


def sample(out: Path, checkpoint: Path, *extra: str, prompt: str = "a red square") -> list[Path]:
    result = cli("sample", prompt, "-c", str(checkpoint), "-n", "2", "--seed", "3", "-o", str(out), "-q",
                 "--device", "cpu", *extra)
    assert result.exit_code == 0, result.output
    return sorted(out.glob("0*.png"))


def pixels(path: Path) -> bytes:
    return np.asarray(Image.open(path).convert("RGB")).tobytes()


def test_the_student_file_names_its_teacher_and_the_run_ships_no_model(distilled, tiny_checkpoint):
    from diffgen.checkpoint import load_model

    with safe_open(str(distilled["student"]), framework="pt") as handle:
        meta, keys = handle.metadata(), list(handle.keys())
    assert meta["format"] == "diffgen-student" and meta["base_model_hash"] == load_model(tiny_checkpoint).content_hash
    settings = json.loads(meta["settings"])
    assert settings["levels"] == 20 and settings["rho"] == 7.0 and json.loads(meta["recipe"])["steps"] == 6
    assert any(k.startswith("guidance.") for k in keys) and any(k.startswith("net.") for k in keys)
    run = distilled["run"]
    assert not (run / "model.safetensors").exists() and (run / "samples" / "step-00000006.png").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["stage"] == "distill" for r in rows)


def test_resume_is_exact(tmp_path, tiny_checkpoint, distilled):
    out = tmp_path / "run"
    first = distill(distilled["data"], out, "--init", str(tiny_checkpoint), "--steps", "3")
    assert first.exit_code == 0, first.output
    again = distill(distilled["data"], out, "--steps", "6", "--resume")
    assert again.exit_code == 0, again.output
    straight, resumed = weights(distilled["student"]), weights(out / "student.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    one_error_line(distill(distilled["data"], out, "--steps", "6", "--resume", "--init", str(tiny_checkpoint)),
                   2, "drop --init")


def test_sigterm_saves_the_state_after_the_step(tmp_path, distilled, tiny_checkpoint):
    import signal
    import subprocess
    import sys

    from diffgen.state import load_latest_state

    from .helpers import wait_for

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "diffgen", "train", str(distilled["data"]), "--distill", "-o",
                             str(out), "--init", str(tiny_checkpoint), "--steps", "100000", "--device", "cpu", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and stderr.strip().splitlines()[-1] == "terminated", stderr
    state = load_latest_state(out / "state")
    assert state is not None and state.stage == "distill" and 0 < state.step < 100000


def test_fast_sampling_replays_byte_for_byte_and_says_what_made_it(tmp_path, distilled, tiny_checkpoint):
    made = sample(tmp_path / "a", tiny_checkpoint, "--fast", "--student", str(distilled["student"]))
    recipe = json.loads(Image.open(made[0]).info["diffgen"])
    assert recipe["fast"] is True and recipe["steps"] == 4 and recipe["sampler_label"] == "LCM"
    assert len(recipe["student"]["sha256"]) == 64
    assert "Sampler: LCM" in Image.open(made[0]).info["parameters"]
    plain = sample(tmp_path / "plain", tiny_checkpoint, "--steps", "4")
    assert "fast" not in json.loads(Image.open(plain[0]).info["diffgen"])
    assert pixels(plain[0]) != pixels(made[0])
    replayed = cli("sample", "--replay", str(made[1]), "-c", str(tiny_checkpoint), "-o", str(tmp_path / "re"),
                   "-q", "--device", "cpu", "--student", str(distilled["student"]))
    assert replayed.exit_code == 0, replayed.output
    assert next((tmp_path / "re").glob("*.png")).read_bytes() == made[1].read_bytes()
    two = sample(tmp_path / "two", tiny_checkpoint, "--fast", "--steps", "2", "--student", str(distilled["student"]))
    assert json.loads(Image.open(two[0]).info["diffgen"])["steps"] == 2 and pixels(two[0]) != pixels(made[0])


def test_a_student_beside_the_checkpoint_is_found_and_a_changed_one_refused(tmp_path, distilled, tiny_checkpoint):
    import shutil

    checkpoint = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    shutil.copy(distilled["student"], tmp_path / "tiny.student.safetensors")
    beside = sample(tmp_path / "a", checkpoint, "--fast")
    given = sample(tmp_path / "b", tiny_checkpoint, "--fast", "--student", str(distilled["student"]))
    assert pixels(beside[0]) == pixels(given[0])
    from diffgen.checkpoint import load_model
    from diffgen.students import read_student, save_student

    student = read_student(distilled["student"], load_model(tiny_checkpoint)).student
    with torch.no_grad():
        student.guidance.mlp[-1].bias.add_(0.1)  # another student of the same teacher
    with safe_open(str(distilled["student"]), framework="pt") as handle:
        meta = handle.metadata()
    other = tmp_path / "other.safetensors"
    save_student(other, student, meta["base_model_hash"], json.loads(meta["settings"]), {}, "other")
    refused = cli("sample", "--replay", str(beside[0]), "-c", str(checkpoint), "-o", str(tmp_path / "re"), "-q",
                  "--device", "cpu", "--student", str(other))
    one_error_line(refused, 2, "was made with student")


def test_fast_refusals_are_one_line(tmp_path, distilled, tiny_checkpoint):
    def run(*args: str):
        return cli("sample", "a cat", "-c", str(tiny_checkpoint), "-o", str(tmp_path / "x"), "-q", "--device", "cpu",
                   *args)

    one_error_line(run("--fast"), 2, "has no distilled student")
    one_error_line(run("--fast", "--student", str(distilled["student"]), "--negative", "blurry"), 2,
                   "--negative does not work with --fast")
    one_error_line(run("--student", str(distilled["student"])), 2, "add --fast")
    one_error_line(run("--fast", "--student", str(distilled["student"]), "--adapter", "x.safetensors"), 2,
                   "adapters were not trained for")
    other = tmp_path / "other.safetensors"
    from diffgen.checkpoint import load_model, save_model

    model = load_model(tiny_checkpoint)
    with torch.no_grad():
        model.denoiser.net.conv_out.bias.add_(0.1)  # another model: another content hash
    save_model(other, model)
    one_error_line(cli("sample", "a cat", "-c", str(other), "-o", str(tmp_path / "y"), "-q", "--device", "cpu",
                       "--fast", "--student", str(distilled["student"])), 2, "was distilled from model")


def test_editing_layouts_and_prompt_weights_work_with_the_student(tmp_path, distilled, tiny_checkpoint):
    import diffgen

    model = diffgen.load(tiny_checkpoint, device="cpu")
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(source)
    steps = []
    fast = dict(fast=True, student=distilled["student"], seed=3)
    edited = model.sample("a red square", init_image=source, strength=0.5, **fast,
                          callback=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 2), (2, 2)]  # half of the 4 levels, from the strength's level down
    kept = model.sample("a red square", init_image=source, strength=0, **fast)
    assert np.array_equal(np.asarray(kept[0]), np.asarray(Image.open(source).convert("RGB")))
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    painted = np.asarray(model.sample("a red square", init_image=source, mask=tmp_path / "mask.png", strength=1,
                                      **fast)[0])
    assert np.array_equal(painted[:, 4:], np.asarray(Image.open(source).convert("RGB"))[:, 4:])
    plain = model.sample("a red square", **fast)[0]
    placed = model.sample("a red square", place={"red square": (0, 0, 0.5, 1)}, **fast)[0]
    weighted = model.sample("a (red:1.6) square", **fast)[0]
    assert len({np.asarray(i).tobytes() for i in (plain, placed, weighted, edited[0])}) == 4
    assert json.loads(placed.info["diffgen"])["layout"]["places"][0][0] == "red square"
    cli_made = sample(tmp_path / "cli", tiny_checkpoint, "--fast", "--student", str(distilled["student"]), "-n", "1")
    assert pixels(cli_made[0]) == np.asarray(plain).tobytes()  # the API's pixels are the CLI's
