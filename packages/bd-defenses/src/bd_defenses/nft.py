"""NFT, Neural-mask Fine-Tuning with MixUp (Karim et al., AAAI 2024).

A neuron mask is fine-tuned on MixUp samples of the clean set (survey Eq. 11-13), which
upper-bound the loss on triggered samples when the trigger is a small on-manifold change.
The regulariser is the L1 distance of the mask from 1 scaled by 1/num_classes (the authors'
code), and each layer's mask is clipped to [alpha * exp(-beta * depth), 1], a lower bound
that falls with depth so deep layers may be pruned further. Defaults: alpha 0.8, beta 0.5,
lambda 1e-3, SGD lr 0.1 (cosine to 0.02), momentum 0.95, 100 epochs; the mask stays soft.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels, epoch_batches
from bd_core.train import optimize

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.masking import bake_masks, clip_masks, mask_summary, masked_model
from bd_defenses.registry import register


@register(
    "nft",
    family="masking",
    paper="Karim et al., Augmented Neural Fine-Tuning for Efficient Backdoor Purification (AAAI 2024)",
)
@dataclass(frozen=True)
class NFT(Defense):
    requires: ClassVar[dict[str, str]] = {"conv": "it learns a mask over every convolution's output channels"}
    alpha: float = setting(0.8, 0, 1)  # mask lower bound scale
    beta: float = setting(0.5, 0, 100)  # mask lower bound decay per layer
    l1_weight: float = setting(1e-3, 0, 10)
    mixup_alpha: float = setting(1.0, above=0, high=1000)  # Beta(a, a) for the MixUp coefficient
    epochs: int = setting(100, 1, 100_000)
    lr: float = setting(0.1, above=0, high=1)
    lr_min: float = setting(0.02, 0, 10)
    momentum: float = setting(0.95, 0, 0.999)
    batch_size: int = setting(256, 1, 1_000_000)

    def lower_bounds(self, layers: int) -> list[float]:
        return [self.alpha * math.exp(-self.beta * depth) for depth in range(1, layers + 1)]

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        wrapped = masked_model(model)
        lows = self.lower_bounds(len(wrapped))
        masks = [m.mask for m in wrapped.values()]
        opt = torch.optim.SGD(masks, lr=self.lr, momentum=self.momentum)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs, eta_min=self.lr_min)
        g = ctx.generator(5)
        mix = torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha)

        def mixup_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            lam = float(mix.sample())
            partner = torch.randperm(len(y), generator=g).to(y.device)
            logits = model(pixels.normalize(lam * x + (1 - lam) * x[partner]))
            mixup = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[partner])
            l1 = sum((1 - m).abs().sum() for m in masks)
            return mixup + self.l1_weight * l1 / data.num_classes

        optimize(
            mixup_loss,
            epoch_batches(pixels, self.batch_size, g),
            opt,
            epochs=self.epochs,
            scheduler=sched,
            after_step=lambda: clip_masks(wrapped, lows),
            description="NFT mask fine-tuning",
        )
        ctx.report(lower_bound_last_layer=round(lows[-1], 6), **mask_summary(wrapped))
        return bake_masks(model)
