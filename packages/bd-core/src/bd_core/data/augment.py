"""Batched augmentation parameters: random crop (with padding) offsets and flip flags.

The pixels are moved by `bd_kernels.apply_trigger` in the same pass that poisons
and normalizes; this module only draws the random parameters, from a seeded
generator, so that a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bd_core.data.imageset import DatasetInfo


@dataclass(frozen=True)
class Augment:
    """Random crop of the zero-padded image (torchvision's RandomCrop(padding=4)) and optional flip."""

    padding: int = 4
    hflip: bool = True

    @staticmethod
    def for_dataset(info: DatasetInfo) -> Augment:
        return Augment(padding=info.crop_padding, hflip=info.hflip)

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5 if self.hflip else None
        return offsets, flip
