"""UNIT, neural distribution tightening (Cheng et al., ECCV 2024; reviewed, not benchmarked,
by the survey). Like MM-BD, activation channels get upper bounds, but they start at
mu + 4 sigma of the layer's activations on the clean data and are tightened under the clean
classification loss with an L1 penalty (survey Eq. 17):

    min_B  L_CE(D_m, f_B) + lambda * ||B||_1

The penalty weight adapts as in MM-BD to keep clean accuracy within acc_reduction. The
survey gives no settings for UNIT; bd's defaults (Adam lr 1e-2, 50 epochs, lambda 1e-3)
are its own and named as such in `bd list defenses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels

from bd_defenses.activations import layers_statistics
from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.bounds import install_bounds, layer_moments, train_bounds
from bd_defenses.registry import register


@register(
    "unit",
    family="additive",
    paper="Cheng et al., UNIT: Backdoor Mitigation via Automated Neural Distribution "
    "Tightening (ECCV 2024); reviewed only, defaults are bd's",
    benchmarked=False,
)
@dataclass(frozen=True)
class UNIT(Defense):
    lam: float = setting(1e-3, 0, 1e6)
    sigmas: float = setting(4.0, 0, 100)  # initial bound: mean + sigmas * std of the layer's clean activations
    alpha: float = setting(1.2, 1, 100)
    acc_reduction: float = setting(0.05, 0, 1)
    adapt_every: int = setting(10, 1, 100_000)
    epochs: int = setting(50, 1, 100_000)
    lr: float = setting(1e-2, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        bounds = install_bounds(model, pixels.normalize(pixels.x[:1]))
        with torch.no_grad():
            for b, stats in zip(bounds, layers_statistics(model, bounds, data.clean, ctx.device), strict=True):
                _, mean, std = layer_moments(stats)
                b.bound.fill_(mean + self.sigmas * std)
        report = train_bounds(
            model,
            bounds,
            pixels,
            ctx,
            loss_fn=lambda logits, idx, y: F.cross_entropy(logits, y),
            penalty_fn=lambda b: b.abs().sum(),
            lam=self.lam,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            alpha=self.alpha,
            acc_reduction=self.acc_reduction,
            adapt_every=self.adapt_every,
            description="UNIT distribution tightening",
        )
        ctx.report(**report)
        return model.eval()
