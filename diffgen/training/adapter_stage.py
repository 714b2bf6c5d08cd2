"""`diffgen train --adapter`: teach a frozen base model a new word from a few captioned pictures.

The base model (``--init``, else the default model) stays frozen; an ``Adapter``
(engine/adapters.py) learns LoRA pairs on the U-Net's attention, the word's input embedding, or
both, with the EDM loss on the folder's images under their captions. The run goes through the
shared step loop (``stages.run_stage``), so its states, exact resume, SIGTERM, time limit and
metrics are those of every stage; it writes ``adapter.safetensors`` (diffgen/adapters.py) instead
of a model.

The guard against drift (prior preservation by distillation): LoRA changes the U-Net for every
prompt, so each step also noises the same images again and asks the adapted U-Net, under other
prompts (``PRIOR_PROMPTS``, the empty prompt that guidance uses among them), for the base U-Net's
own prediction (computed with the adapters switched off). It needs no generated pictures and
costs one more forward pass of the batch. An embedding alone changes only prompts that contain
its word, so it needs no guard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffgen import devices
from diffgen.adapters import KINDS, save_adapter
from diffgen.checkpoint import default_checkpoint, load_model
from diffgen.config import TrainConfig
from diffgen.engine.adapters import Adapter, attach, lora_layers
from diffgen.engine.denoiser import Conditioning, loss_weight, noised
from diffgen.engine.layout_bias import LayoutBias, attention_biased
from diffgen.engine.model import PromptCache
from diffgen.engine.regions import Placement, TokenSpans
from diffgen.errors import InputError
from diffgen.sampling.layout import DEFAULT_LAYOUT_STRENGTH
from diffgen.state import require_state, with_prefix
from diffgen.training.adapter_scenes import SceneMaker, masked_loss, scene_rows
from diffgen.training.batches import image_batch, pick_captions
from diffgen.training.metrics import RunLog
from diffgen.training.run import (
    Run,
    TrainOptions,
    check_resume,
    hold_run_folder,
    load_data,
    one_process_start,
    scan_data,
)
from diffgen.training.stages import Stage, main_lr, resumed_at, run_stage

# Prompts the adapted U-Net must keep answering as the base does: guidance's empty prompt and a few
# everyday subjects (the default model knows each of them).
PRIOR_PROMPTS = ("", "a cat", "a dog", "a car", "a house", "a tree", "a flower", "a bird", "an apple",
                 "a star", "a fish", "a bicycle")
STOPWORDS = frozenset("a an the of on in at to with and or by for is photo picture image".split())
DEFAULT_STEPS = 300
DEFAULT_BATCH = 4
DEFAULT_LR = {"lora": 1e-3, "embedding": 5e-3, "both": 1e-3}


@dataclass(frozen=True)
class AdapterOptions:
    """What to teach: the kind, the LoRA rank, the word (inferred from the captions when None),
    the learning rate (by kind when None) and the prior-preservation weight."""

    kind: str = "lora"
    rank: int = 4
    trigger: str | None = None
    lr: float | None = None
    prior_weight: float = 1.0
    scene_share: float = 0.5

    def check(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"--adapter must be one of {', '.join(KINDS)}, got '{self.kind}'")
        if not 0.0 <= self.prior_weight <= 100.0:
            raise InputError(f"--prior-weight must be from 0 to 100, got {self.prior_weight}")
        if not 0.0 <= self.scene_share <= 1.0:
            raise InputError(f"--scenes must be from 0 to 1, got {self.scene_share}")
        if not 1 <= self.rank <= 64:
            raise InputError(f"--rank must be from 1 to 64, got {self.rank}")
        if self.trigger is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.trigger):
            raise InputError(f"--trigger must be one lowercase word, got '{self.trigger}'")


def infer_trigger(captions: Sequence[Sequence[str]]) -> str:
    """The word every caption shares (articles aside); the longest if several."""
    shared: set[str] | None = None
    for caption in (c for options in captions for c in options):
        words = set(re.findall(r"[a-z0-9][a-z0-9_-]*", caption.lower())) - STOPWORDS
        shared = words if shared is None else shared & words
    if not shared:
        raise InputError("the captions share no word to teach: give --trigger WORD (a word in every caption)")
    return sorted(shared, key=lambda w: (-len(w), w))[0]


def train_adapter(opts: TrainOptions, adapter_opts: AdapterOptions) -> dict[str, Any]:
    """The adapter run end to end on one process; returns its summary."""
    adapter_opts.check()
    if opts.budget is not None or opts.text_encoder is not None:
        raise InputError("--adapter trains on a frozen --init model: --budget and --text-encoder do not apply")
    started, device, dist = one_process_start(opts, "--adapter")
    from diffgen.training import _stop_on_sigterm

    with contextlib.ExitStack() as stack:
        run, base_hash, trigger = _prepare(opts, adapter_opts, device, dist, started, stack)
        stack.enter_context(_stop_on_sigterm(run))  # SIGTERM: the state after this step, then the end
        return _train(run, adapter_opts, base_hash, trigger)


def _prepare(opts: TrainOptions, adapter_opts: AdapterOptions, device: torch.device, dist: Any,
             started: float, stack: contextlib.ExitStack) -> tuple[Run, str, str]:
    """The base model, the config, the data and the word, checked; then the run folder held."""
    say = opts.say
    state = None
    if opts.resume:
        if opts.init is not None:
            raise InputError("--resume continues with the run's own base model: drop --init")
        state = require_state(opts.out / "state", say)
        init = state.info.get("init") or {}
        base_path = Path(init.get("path", ""))
    else:
        base_path = (opts.init or default_checkpoint()).resolve()  # a resume may start elsewhere
    base = load_model(base_path, device, image_tower=False)
    if state is not None and base.content_hash != (state.info.get("init") or {}).get("content_hash"):
        raise InputError(f"--resume: the base model {base_path} has changed since the run began")
    if state is not None:
        recorded = state.info.get("adapter")
        if state.stage != "adapter" or not isinstance(recorded, dict):
            raise InputError(f"--resume: {opts.out} holds a model's training run, not an adapter's")
        if recorded != _recorded(adapter_opts, adapter_opts.trigger or recorded.get("trigger", "")):
            raise InputError(f"--resume: the run was started with other adapter settings ({recorded})")
    t = opts.config.train
    # the base's own [train] section is not used: its extra signals (grounding, negatives, later
    # stages) would ask the folder for what a few captioned pictures do not have
    cfg = dataclasses.replace(base.config, train=TrainConfig(
        steps=t.steps, batch_size=t.batch_size, checkpoint_every=100, warmup_steps=10,
        lr=adapter_opts.lr or DEFAULT_LR[adapter_opts.kind]))
    opts = dataclasses.replace(opts, config=cfg)
    if not opts.resume and list((opts.out / "state").glob("state-*.json")):
        raise InputError(f"{opts.out} already holds a training run: add --resume to continue it, "
                         "or choose another -o folder")
    report = scan_data(opts.data, cfg, say)
    resume = check_resume(opts.out / "state", cfg, len(report.items), opts.data, say) if opts.resume else None
    data, train_idx, held_idx = load_data(cfg, report, device, say)
    captions = [c for options in data.captions for c in options]
    trigger = adapter_opts.trigger or (state.info["adapter"]["trigger"] if state is not None else
                                       infer_trigger([data.captions[i] for i in range(len(data))]))
    if not any(re.search(rf"(?<![\w-]){re.escape(trigger)}(?![\w-])", c.lower()) for c in captions):
        raise InputError(f"--trigger {trigger}: no caption in {opts.data} uses the word")
    hold_run_folder(opts.out, cfg, stack, say)
    log = RunLog(opts.out, True, (resume.stage, resume.step) if resume else None)
    init = {"path": str(base_path), "content_hash": base.content_hash or ""}
    run = Run(opts, data, train_idx + held_idx, [], base, device, dist, log, started, resume, init,
              len(report.skipped))
    return run, base.content_hash or "", trigger


def _recorded(adapter_opts: AdapterOptions, trigger: str) -> dict[str, Any]:
    """The adapter settings a state keeps (a resumed run must be given the same)."""
    return {"kind": adapter_opts.kind, "rank": adapter_opts.rank, "trigger": trigger,
            "prior_weight": adapter_opts.prior_weight, "scene_share": adapter_opts.scene_share}


def _train(run: Run, adapter_opts: AdapterOptions, base_hash: str, trigger: str) -> dict[str, Any]:
    kind, cfg = adapter_opts.kind, run.cfg
    model, device = run.model, run.device
    unet, text = model.denoiser.net, model.text_encoder
    embedding = text.clip.token_embedding
    lora = {name: (layer.in_features, layer.out_features) for name, layer in lora_layers(unet).items()} \
        if kind in ("lora", "both") else {}
    ids = text.tokenizer.encode(trigger) if kind in ("embedding", "both") else []
    adapter = Adapter(lora, adapter_opts.rank, ids, embedding.weight[ids].detach().cpu() if ids else None,
                      seed=cfg.train.seed).to(device)
    attached = attach(adapter, unet, embedding, 1.0)
    prior_weight = adapter_opts.prior_weight if lora else 0.0
    run.say(f"teaching '{trigger}' ({kind}, {sum(p.numel() for p in adapter.parameters()):,} parameters) "
            f"from {len(run.train_idx)} images; prior preservation weight {prior_weight}")
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.train.lr, weight_decay=0.0)
    start = resumed_at(run.resume, optimizer, {"adapter": adapter})
    prior = PromptCache(text)
    prior.encode_all(list(PRIOR_PROMPTS))
    denoiser, d = model.denoiser, cfg.denoiser
    # bf16 where the CPU (AVX512-BF16, AMX) or GPU has the units, as every training stage does
    autocast = devices.autocast(device, cfg.train.precision)

    scenes = SceneMaker(model, trigger)
    spans = TokenSpans(text.tokenizer, text.context_length)

    def loss(idx: list[int], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = image_batch(run.data, idx, device)
        captions = pick_captions(run.data, idx, gen)
        rows = scene_rows(len(idx), adapter_opts.scene_share, gen)
        mask = torch.ones_like(x0[:, :1])
        placements: list[list[Placement]] = [[] for _ in idx]
        if rows:  # those rows become two-object scenes (adapter_scenes.py), under the layout bias
            made, made_captions, made_masks, made_placements = scenes.make(x0[rows], gen)
            x0, mask = x0.clone(), mask.clone()
            x0[rows], mask[rows] = made, made_masks
            for row, caption, placed in zip(rows, made_captions, made_placements):
                captions[row], placements[row] = caption, placed
        noisy, sigma = noised(x0, d.p_mean, d.p_std, gen)
        bias = LayoutBias.of(captions, placements, spans, DEFAULT_LAYOUT_STRENGTH, device)
        bias.active = True
        with autocast, attention_biased(unet, bias):
            encoding = text.encode(captions)  # each step: the word's vectors are trained
            x0_hat = denoiser(noisy, sigma, Conditioning(encoding.tokens, encoding.pooled))
        weight = torch.as_tensor(loss_weight(sigma, denoiser.sigma_data))
        own = masked_loss(x0_hat, x0, weight, mask).mean()
        if not prior_weight:
            return own, {"denoising": own.detach()}
        picks = [PRIOR_PROMPTS[int(torch.randint(len(PRIOR_PROMPTS), (1,), generator=gen))] for _ in idx]
        other = prior(picks)
        noisy_p, sigma_p = noised(x0, d.p_mean, d.p_std, gen)
        with torch.no_grad(), attached.disabled(), autocast:
            target = denoiser(noisy_p, sigma_p, other).float()
        s = sigma_p[:, None, None, None]
        with autocast:
            adapted = denoiser(noisy_p, sigma_p, other).float()
        kept = (loss_weight(s, denoiser.sigma_data) * (adapted - target) ** 2).mean()
        return own + prior_weight * kept, {"denoising": own.detach(), "prior": kept.detach()}

    recorded = _recorded(adapter_opts, trigger)
    stage = Stage("adapter", cfg.train.steps, cfg.train.batch_size, unet, optimizer, main_lr(run, cfg.train.lr),
                  loss, lambda: with_prefix(adapter.state_dict(), "adapter"), time_limited=True,
                  params=list(adapter.parameters()))
    run.state_info["adapter"] = recorded
    try:
        done = run_stage(run, stage, start)
    finally:
        attached.remove()
    recipe = {"steps": done, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr, "seed": cfg.train.seed,
              "prior_weight": prior_weight, "prior_prompts": list(PRIOR_PROMPTS) if prior_weight else [],
              "scene_share": adapter_opts.scene_share,
              "images": len(run.train_idx), "data": str(run.opts.data)}
    path = run.opts.out / "adapter.safetensors"
    name = run.opts.name or run.opts.out.resolve().name
    save_adapter(path, adapter.cpu(), base_hash, kind, [trigger], recipe, name)
    final = next((r["loss"] for r in reversed(run.log.rows) if r["stage"] == "adapter"), None)
    summary = {"adapter": str(path), "kind": kind, "trigger": trigger, "rank": adapter.rank, "steps": done,
               "configured_steps": cfg.train.steps, "finished": run.finished.get("adapter", False),
               "final_loss": final, "bytes": path.stat().st_size, "base_model_hash": base_hash,
               "seconds_this_process": round(time.perf_counter() - run.started, 2), "init": run.init}
    from diffgen.fileio import atomic_write

    atomic_write(run.opts.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    return summary
