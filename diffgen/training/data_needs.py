"""What a run's settings need from its data, as one table, checked before any training.

Each row: the [train] setting, when it is on, what the training images must have for it, and why.
A run whose setting is on while no training image has what it needs is refused with one line that
names the setting, the need and the way out, instead of training a stage that can learn nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from diffgen.config import Config
from diffgen.data import TrainingSet
from diffgen.errors import InputError

REGIONS = 'object regions (metadata.jsonl "regions"; `diffgen data emoji` writes them)'


@dataclass(frozen=True)
class DataNeed:
    setting: str  # the [train] key
    on: Callable[[Config], bool]
    need: Callable[[Config], str]  # what the training images must have
    why: str
    met: Callable[[TrainingSet, list[int]], bool]


def _has_regions(data: TrainingSet, indices: list[int]) -> bool:
    return data.regions is not None and any(data.regions[i] for i in indices)


DATA_NEEDS = (
    DataNeed("negative_weight", lambda c: c.train.negative_weight > 0,
             lambda c: 'negative captions (metadata.jsonl "negative_text"; `diffgen data emoji` writes them)',
             "the caption contrast compares each image's caption with them",
             lambda data, indices: any(data.negatives_of(i) for i in indices)),
    DataNeed("grounding_weight", lambda c: c.train.grounding_weight > 0, lambda c: REGIONS,
             "the grounding loss pulls each name's attention into its region", _has_regions),
    DataNeed("layout_bias", lambda c: c.train.layout_bias > 0 and c.train.steps > 0, lambda c: REGIONS,
             "the bias is built from them", _has_regions),
    DataNeed("layout_steps", lambda c: c.train.layout_steps > 0, lambda c: REGIONS,
             "the layout predictor learns from them", _has_regions),
    DataNeed("upscale_steps", lambda c: c.train.upscale_steps > 0,
             lambda c: f"a shorter side of at least {2 * c.image_size} px (twice image_size; "
                       "`diffgen data emoji --size` renders larger scenes)",
             "the upscaler learns from them",
             lambda data, indices: bool(set(data.indices_2x) & set(indices))),
)


def check_data_needs(cfg: Config, data: TrainingSet, train_idx: list[int]) -> None:
    """InputError for the first setting that is on while no training image has what it needs."""
    for row in DATA_NEEDS:
        if row.on(cfg) and not row.met(data, train_idx):
            value = getattr(cfg.train, row.setting)
            raise InputError(f"train.{row.setting} is {value:g} but no training image has {row.need(cfg)}: "
                             f"{row.why}; set it to 0 or add them")
