"""SIG (Barni et al., 2019): a clean-label attack. Target-class training images get a
horizontal sinusoidal signal v(i, j) = delta * sin(2 pi j f / m) added (m the image
width), labels unchanged; at test time the signal is added to any input.
BackdoorBench's setting: delta 40 (on the 0..255 scale), f 6."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bd_core.attacks.base import Attack, PatternTrigger
from bd_core.data.imageset import ImageSet


def sinusoid(size: int, channels: int, delta: float, frequency: float) -> torch.Tensor:
    columns = torch.arange(size, dtype=torch.float32)
    row = delta * torch.sin(2 * math.pi * columns * frequency / size)
    return row.expand(channels, size, size).contiguous()


@dataclass(frozen=True)
class SIG(Attack):
    name = "sig"
    paper = "Barni et al., A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning (ICIP 2019)"
    clean_label = True
    delta: float = 40.0
    frequency: float = 6.0

    def __post_init__(self) -> None:
        if not 0 < self.delta <= 255 or self.frequency <= 0:
            raise ValueError(f"delta must be in (0, 255] and frequency > 0, got {self.delta}, {self.frequency}")

    def fit(self, train: ImageSet, seed: int, target: int = 0) -> PatternTrigger:
        s = train.image_size
        return PatternTrigger(sinusoid(s, train.channels, self.delta, self.frequency), torch.ones(1, s, s), mode="add")
