"""A time budget for the whole run: the shares, the planned length, the schedule that ends with it."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from diffgen.config import Config
from diffgen.training import budget
from diffgen.training.budget import Budget

from .helpers import cli, metrics, train_config


def test_the_stages_share_the_budget_in_order():
    cfg = Config()
    b = Budget(600.0, started=1000.0)
    margin = max(budget.MARGIN_MIN_S, budget.MARGIN_SHARE * 600)
    assert b.deadline("clip", cfg) == pytest.approx(1000 + budget.CLIP_SHARE * 600)
    assert b.deadline("diffusion", cfg) == pytest.approx(1600 - margin)  # nothing after it
    later = SimpleNamespace(train=SimpleNamespace(layout_steps=10, upscale_steps=10))  # what deadline() reads
    assert b.deadline("diffusion", later) == pytest.approx(1600 - margin - (budget.LAYOUT_SHARE + budget.UPSCALE_SHARE)
                                                           * 600)
    assert b.deadline("layout", later) == pytest.approx(1600 - margin - budget.UPSCALE_SHARE * 600)
    assert b.deadline("clip", later) < b.deadline("diffusion", later) < b.deadline("layout", later) \
        < b.deadline("upscale", later) < 1600


def test_planned_steps_fit_the_time_left_within_the_configured_steps():
    assert budget.planned_steps(25, 20000, 0.5, 100.0) == 25 + int(100 * budget.PLAN_SAFETY / 0.5)
    assert budget.planned_steps(25, 60, 0.5, 100.0) == 60  # never past the configured steps
    assert budget.planned_steps(25, 20000, 0.5, -3.0) == 26  # out of time: one more step ends the stage
    assert budget.clip_steps(500, 1348, 128) == 211  # 20 passes over the images
    assert budget.clip_steps(500, 100_000, 128) == 500


def test_a_plan_is_revised_at_its_middle_and_at_three_quarters_while_there_are_steps_to_time():
    assert budget.next_revision(25, 1000) == 500
    assert budget.next_revision(500, 1000) == 750  # the revision at the middle replanned 1,000 steps
    assert budget.next_revision(500, 1400) == 700  # it found more time: its new middle still lies ahead
    assert budget.next_revision(750, 1000) is None
    assert budget.next_revision(25, 60) is None  # too short to time anything after the first plan


def test_the_decayed_schedule_warms_up_holds_and_ends_at_zero():
    lrs = [budget.decayed_lr(s, 1000, 1e-3, 200) for s in range(1000)]
    assert lrs[0] == pytest.approx(1e-3 / 100)  # warm-up at most a tenth of the steps
    assert lrs[99] == lrs[500] == lrs[799] == 1e-3
    assert all(a >= b for a, b in zip(lrs[800:], lrs[801:])) and lrs[-1] == pytest.approx(1e-3 / 200)
    assert budget.ema_decay(0.995, 1000) == pytest.approx(0.99)  # at most a tenth of the steps
    assert budget.ema_decay(0.995, 100_000) == 0.995


def test_a_budgeted_run_plans_its_steps_and_ends_in_time(shared_shapes, tmp_path):
    config = tmp_path / "long.toml"  # configured far longer than the budget allows
    config.write_text(train_config(train={"steps": 100_000, "clip_steps": 100_000, "checkpoint_every": 100_000}))
    out = tmp_path / "run"
    started = time.perf_counter()
    result = cli("train", str(shared_shapes), "-o", str(out), "--config", str(config), "--budget", "0.4",
                 "--device", "cpu", "--threads", "1")
    wall = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert wall < 0.4 * 60 + 5, wall
    assert "steps planned (configured: 100000)" in result.output
    first = int(result.output.split(" steps planned (configured: 100000)")[0].rsplit(" ", 1)[-1])
    if budget.REVISE_SHARES[0] * first > 25 + budget.PLAN_AT:  # long enough to revise: at its middle, then later
        assert 1 <= result.output.count("steps now planned (configured: 100000)") <= 4, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["budget_seconds"] == 24.0
    state = json.loads(next((out / "state").glob("state-diffusion-*.json")).read_text())
    planned = state["planned_steps"]
    assert summary["steps"] <= planned < 100_000
    rows = [r for r in metrics(out) if r["stage"] == "diffusion"]
    if summary["steps"] == planned:  # the schedule ran to its end: its last step at the last level
        base = max(r["lr"] for r in rows)
        assert rows[-1]["lr"] == pytest.approx(base / max(1, int(budget.DECAY_SHARE * planned)))
    clip = [r for r in metrics(out) if r["stage"] == "clip"]
    assert len(clip) <= budget.clip_steps(100_000, summary["train_images"], 16)  # 20 passes, not 100,000 steps


def test_plan_prints_the_stages_and_their_time_and_writes_nothing(shared_shapes, shared_config, tmp_path):
    out = tmp_path / "run"
    result = cli("train", str(shared_shapes), "-o", str(out), "--config", str(shared_config), "--plan",
                 "--device", "cpu", "--threads", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("data: 22 training images, 2 held out, 24 distinct caption(s)")
    assert any(line.startswith("clip: 20 steps at ") and line.endswith(" min") for line in lines)
    assert any(line.startswith("diffusion: 50 steps at ") for line in lines)
    assert not out.exists()
    budgeted = cli("train", str(shared_shapes), "-o", str(out), "--config", str(shared_config), "--plan",
                   "--budget", "2", "--device", "cpu", "--threads", "1")
    assert budgeted.exit_code == 0, budgeted.output
    assert "of the budget" in budgeted.output and "whole run: 2 min (the budget)" in budgeted.output
