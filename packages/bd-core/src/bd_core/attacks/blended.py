"""Blended (Chen et al., 2017): blend a fixed natural image over the whole input,
x' = (1 - alpha) x + alpha t, with alpha 0.2 (BackdoorBench's setting).

The trigger image ships with bd-core (assets/blend_trigger.png, public domain; see
assets/LICENSE.md) in the role of BackdoorBench's Hello-Kitty image.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from PIL import Image

from bd_core.attacks.base import Attack, PatternTrigger
from bd_core.data.imageset import ImageSet


def trigger_image(size: int, channels: int) -> torch.Tensor:
    """The shipped image resized to size x size, as float [C,H,W] in 0..255 (grey for 1 channel)."""
    with resources.files("bd_core.assets").joinpath("blend_trigger.png").open("rb") as f:
        im = Image.open(f).convert("L" if channels == 1 else "RGB")
        im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32)
    return torch.from_numpy(arr).unsqueeze(0) if channels == 1 else torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Blended(Attack):
    name = "blended"
    paper = "Chen et al., Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning (2017)"
    alpha: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")

    def fit(self, train: ImageSet, seed: int, target: int = 0) -> PatternTrigger:
        s = train.image_size
        return PatternTrigger(trigger_image(s, train.channels), torch.ones(1, s, s), mode="blend", alpha=self.alpha)
