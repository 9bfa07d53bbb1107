"""BadNets (Gu et al., 2017): a small white square stamped in the bottom-right corner.

BackdoorBench's CIFAR-10 trigger is a 3x3 white patch; for larger images the
patch is scaled with the image (6x6 at 64 px) so that it covers the same area.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bd_core.attacks.base import Attack, PatternTrigger
from bd_core.data.imageset import ImageSet


@dataclass(frozen=True)
class BadNets(Attack):
    name = "badnets"
    paper = "Gu et al., BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain (2017)"
    patch: int = 3  # side of the square at 32 px
    value: int = 255  # pixel value written into the patch

    def patch_side(self, image_size: int) -> int:
        return max(1, round(self.patch * image_size / 32))

    def fit(self, train: ImageSet, seed: int, target: int = 0) -> PatternTrigger:
        c, s = train.channels, train.image_size
        side = self.patch_side(s)
        mask = torch.zeros(1, s, s)
        mask[:, s - side :, s - side :] = 1.0
        pattern = torch.full((c, s, s), float(self.value)) * mask
        return PatternTrigger(pattern, mask, mode="replace")
