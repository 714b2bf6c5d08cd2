"""A time budget for a whole run (``diffgen train --budget MINUTES``).

Every stage shares the budget by a fixed rule: the CLIP stage may take at most ``CLIP_SHARE`` of it
(and trains for at most ``CLIP_EPOCHS`` passes over the training images, since a folder of class
labels has learnt what its few captions can teach long before 500 x 128 image views); the layout
and upscaling stages, where the config has them, keep ``LAYOUT_SHARE`` and ``UPSCALE_SHARE`` at the
end; the diffusion stage takes the rest, less a margin for the final grid and the model file.

A stage with a budget plans its own length: it times its steps from ``TIMED_FROM`` to ``PLAN_AT``,
then sets its step count to what fits before its deadline (at most the configured steps), revised
at ``REVISE_SHARES`` of the way from the steps timed since the last plan, so that its learning-rate
schedule and EMA end with the budget instead of being cut off in the middle. The plan is kept in
the training state: a resumed stage follows it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffgen.config import Config

CLIP_SHARE = 0.15
LAYOUT_SHARE = 0.05
UPSCALE_SHARE = 0.25
CLIP_EPOCHS = 20
# kept back at the end of the run for the final sample grid, the state and model.safetensors
MARGIN_SHARE, MARGIN_MIN_S = 0.03, 10.0
# steps timed before a stage plans its length (the first few are slower: allocation, caches)
TIMED_FROM, PLAN_AT = 5, 25
# of the time a plan expects to have, the share it plans steps for (metrics, saves, slower steps)
PLAN_SAFETY = 0.95
# the plan is revised at these shares of its steps (before the decay begins), each time from the
# steps since the last plan: the first steps run slower than the rest (a 30-minute digits run
# planned at 1.91 s a step, then ran at about 1.55 s, and ended 6.6 minutes early), and other work
# on the machine can slow it (two 10-minute runs revised at their middle, then slowed further and
# were stopped by their deadline 97 steps short of their plan, inside their decay)
REVISE_SHARES = (0.5, 0.75)
# the last share of a planned diffusion stage decays the learning rate linearly to zero
DECAY_SHARE = 0.2
# a planned stage's EMA averages over at most this share of its steps
EMA_SHARE = 0.1


@dataclass(frozen=True)
class Budget:
    """Seconds for the whole run, from ``started`` (time.perf_counter())."""

    seconds: float
    started: float

    def deadline(self, stage: str, cfg: Config) -> float:
        """The time.perf_counter() value by which ``stage`` must end."""
        end = self.started + self.seconds - max(MARGIN_MIN_S, MARGIN_SHARE * self.seconds)
        if stage == "clip":
            return min(end, self.started + CLIP_SHARE * self.seconds)
        later = {"diffusion": ("layout", "upscale"), "layout": ("upscale",)}.get(stage, ())
        shares = {"layout": LAYOUT_SHARE if cfg.train.layout_steps else 0.0,
                  "upscale": UPSCALE_SHARE if cfg.train.upscale_steps else 0.0}
        return end - sum(shares[s] for s in later) * self.seconds


def clip_steps(configured: int, train_images: int, batch_size: int) -> int:
    """The CLIP stage's steps under a budget: at most ``CLIP_EPOCHS`` passes over the images."""
    return max(1, min(configured, math.ceil(CLIP_EPOCHS * train_images / batch_size)))


def planned_steps(done: int, configured: int, seconds_per_step: float, seconds_left: float) -> int:
    """The step count a stage plans at step ``done``: what fits in ``seconds_left`` (with
    ``PLAN_SAFETY``), at least one more step, at most ``configured``."""
    fits = int(max(0.0, seconds_left) * PLAN_SAFETY / max(seconds_per_step, 1e-9))
    return max(done + 1, min(configured, done + fits))


def next_revision(done: int, total: int) -> int | None:
    """The step at which a plan made after ``done`` steps for ``total`` is revised: the first of
    ``REVISE_SHARES`` of ``total`` at least ``PLAN_AT`` steps ahead (steps to time), else None."""
    for share in REVISE_SHARES:
        if int(share * total) > done + PLAN_AT:
            return int(share * total)
    return None


def decayed_lr(step: int, total: int, base_lr: float, warmup_steps: int) -> float:
    """Warm-up, constant, then a linear decay to zero over the last ``DECAY_SHARE`` of ``total``
    steps (warm-up at most a tenth of them): a schedule that ends when the budget does."""
    warmup = max(1, min(warmup_steps, total // 10))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    decay_from = total - max(1, int(DECAY_SHARE * total))
    if step < decay_from:
        return base_lr
    return base_lr * max(0.0, (total - step) / (total - decay_from))


def ema_decay(configured: float, total: int) -> float:
    """The EMA decay of a planned stage: the configured one, shortened to average over at most
    ``EMA_SHARE`` of its steps (an average longer than the run would keep its untrained start)."""
    return min(configured, 1 - 1 / max(1.0, EMA_SHARE * total))
