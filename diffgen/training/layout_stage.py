"""Stage 3: the layout predictor (engine/layout_net.py) learns where the data's captions put their
objects, from the object regions the data records (metadata.jsonl "regions", written by
`diffgen data emoji`). It runs after the U-Net, against the text encoder the U-Net was trained
with, frozen: the predictor reads the same token states the sampler feeds the U-Net.

It costs little: one text-encoder forward pass and a transformer of two thin layers per batch of
captions, no images. A state is saved like the other stages' (``state-layout-N``), so a run
interrupted here resumes here, exactly.
"""

from __future__ import annotations

import torch

from diffgen import distributed
from diffgen.engine.layout_net import LayoutTargets, layout_loss
from diffgen.engine.regions import TokenSpans
from diffgen.state import TrainingState, with_prefix
from diffgen.training.batches import pick_captions
from diffgen.training.run import Run
from diffgen.training.stages import Stage, main_lr, resumed_at, run_stage


def train_layout(run: Run, resume: TrainingState | None) -> int:
    """The layout stage from its start or from ``resume``; returns the steps done."""
    t = run.cfg.train
    predictor = run.model.layout
    assert predictor is not None, "the config's layout.width is checked against train.layout_steps"
    predictor.train().requires_grad_(True)
    text = run.model.text_encoder.eval()
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=t.layout_lr, weight_decay=t.weight_decay)
    start = resumed_at(resume, optimizer)
    net = distributed.wrapped(predictor, run.dist)
    spans = TokenSpans(text.tokenizer, text.context_length)
    params: list[torch.Tensor] = list(predictor.parameters())

    def loss(idx: list[int], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        captions = pick_captions(run.data, idx, gen)
        regions = [run.data.regions_of(i, c) for i, c in zip(idx, captions)]
        # a caption the data gives no regions for says nothing about where its objects are
        kept = [k for k, r in enumerate(regions) if r]
        if not kept:  # every rank still runs backward, for DDP's gradient sync
            zero = torch.stack([p.sum() for p in params]).sum() * 0.0
            parts = ("objectness", "boxes", "modes") + (("spread",) if predictor.spread is not None else ())
            return zero, {part: zero.detach() for part in parts}
        captions, regions = [captions[k] for k in kept], [regions[k] for k in kept]
        with torch.no_grad():
            tokens, counts = text.token_states(captions)
        targets = LayoutTargets.of(captions, regions, spans, counts, tokens.shape[1]).to(run.device)
        return layout_loss(net(tokens, targets.valid), targets)

    def count(step: int, total: int) -> None:
        predictor.trained_steps.fill_(step + 1)

    # the learning rate does not depend on layout_steps, so that a resumed run may go on longer
    done = run_stage(run, Stage("layout", t.layout_steps, t.layout_batch_size, net, optimizer,
                                main_lr(run, t.layout_lr), loss,
                                lambda: with_prefix(run.model.state_dict(), "model"), after_step=count,
                                params=params), start)
    predictor.eval().requires_grad_(False)
    return done
