"""A second judge of emoji scenes: a small CNN classifier trained on the data's own renders.

Template matching (emoji_eval.SpriteMatcher) compares pixels, so a cloud of right-coloured specks
can sit closer to the prompted sprite than to any other. The judge looks at the whole object
instead: it is trained to name the concept of single-object scenes drawn exactly as the training
data draws them (any of the three sizes, any place, any background), with blur, pixel noise and
colour jitter so that it must use shape as well as colour and tolerates a generated image's
softness. It is used for evaluation only, never for training the generator, and its accuracy on
fresh real renders is reported beside every score as its ceiling. Its penultimate features also
give a Fréchet distance that means the same thing for every model (a model's own CLIP does not).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from diffgen.emoji.scenes import Concept, SceneComposer
from diffgen.fileio import atomic_write

JUDGE_SIZE = 64  # images of any size are resized to this before judging


class ShapeJudge(nn.Module):
    """A stem convolution at 64 px, four stages that halve the resolution (64 -> 4 px), global
    average pooling and a linear classifier over the concepts (about 0.13 GFLOP per image)."""

    def __init__(self, names: list[str], width: int = 32):
        super().__init__()
        self.names = list(names)
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
        cin = width
        for cout in (width, 2 * width, 4 * width, 8 * width):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, stride=2), nn.GroupNorm(8, cout), nn.SiLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, len(names))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> pooled features (B, F)."""
        if images.shape[-1] != JUDGE_SIZE or images.shape[-2] != JUDGE_SIZE:
            images = F.interpolate(images, size=(JUDGE_SIZE, JUDGE_SIZE), mode="bilinear", antialias=True,
                                   align_corners=False)
        return self.body(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> logits (B, num_concepts)."""
        return self.head(self.features(images))

    @torch.no_grad()
    def ranks(self, images: torch.Tensor, prompted: list[str]) -> list[int]:
        """Rank (1 = most likely) of each image's prompted concept."""
        logits = self(images)
        own = logits[torch.arange(len(prompted)), [self.names.index(p) for p in prompted]]
        return (1 + (logits > own[:, None]).sum(dim=1)).tolist()


def pil_batch(images: list) -> torch.Tensor:
    """PIL RGB images -> (B, 3, H, W) float in [-1, 1]."""
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1


def render_singles(composer: SceneComposer, items: list[Concept], per_concept: int, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) uint8 single-object scenes, per_concept of each concept, and their labels."""
    rng = random.Random(seed)
    images, labels = [], []
    for _ in range(per_concept):
        for label, concept in enumerate(items):
            image = composer.single_scene(rng, concept).image
            images.append(np.asarray(image, dtype=np.uint8))
            labels.append(label)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float in [-1, 1] with blur, pixel noise and per-channel colour jitter."""
    x = batch.float() / 127.5 - 1
    b = x.shape[0]
    blur = torch.rand(b, generator=gen) < 0.5
    if blur.any():
        soft = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x[blur] = soft
    gain = 1 + 0.15 * torch.randn(b, 3, 1, 1, generator=gen)
    shift = 0.1 * torch.randn(b, 3, 1, 1, generator=gen)
    noise = torch.randn(x.shape, generator=gen) * 0.08 * torch.rand(b, 1, 1, 1, generator=gen)
    return (x * gain + shift + noise).clamp(-1.2, 1.2)


def train_judge(composer: SceneComposer, items: list[Concept], per_concept: int = 40, epochs: int = 8,
                seed: int = 0, batch_size: int = 64, log=print) -> tuple[ShapeJudge, dict]:
    """Train the judge on fresh renders; return it and its accuracy on other fresh renders."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    images, labels = render_singles(composer, items, per_concept, seed)
    test_images, test_labels = render_singles(composer, items, 4, seed + 1)
    judge = ShapeJudge([c.name for c in items])
    steps_per_epoch = len(images) // batch_size
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        judge.train()
        order = torch.randperm(len(images), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(judge(augment(images[idx], gen)), labels[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log(f"judge epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")
    judge.eval()
    with torch.no_grad():
        logits = torch.cat([judge(test_images[i:i + 256].float() / 127.5 - 1) for i in range(0, len(test_images), 256)])
    order = logits.argsort(dim=1, descending=True)
    top1 = (order[:, 0] == test_labels).float().mean().item()
    top5 = (order[:, :5] == test_labels[:, None]).any(dim=1).float().mean().item()
    info = {"train_images": len(images), "epochs": epochs, "test_images": len(test_images),
            "test_top1": top1, "test_top5": top5, "seconds": round(time.perf_counter() - started, 1)}
    return judge, info


def save_judge(judge: ShapeJudge, info: dict, path: Path) -> None:
    """safetensors with the concept names and test accuracy as metadata (atomic)."""
    metadata = {"names": json.dumps(judge.names), "info": json.dumps(info)}
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, tmp,
                                             metadata=metadata))


def load_judge(path: Path) -> tuple[ShapeJudge, dict]:
    """The judge saved by ``save_judge`` and its info."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    judge = ShapeJudge(json.loads(metadata["names"]))
    judge.load_state_dict(load_file(str(path)))
    return judge.eval(), json.loads(metadata["info"])
