"""MM-BD mitigation (Wang et al., IEEE S&P 2024): the maximum-margin statistic shows backdoor
inputs drive abnormally large activations, so each activation layer's channels get upper
bounds B, initialised at the layer's largest activation on the clean data, and learned to
keep the logits on D_m unchanged with an L2 penalty on B (survey Eq. 16):

    min_B  mean (f_B(x) - f(x))^2 + lambda * sum_l ||B_l||_2

Defaults from the authors' code as the survey ran it: Adam lr 1e-3, 50 epochs, lambda 0.5,
multiplied by alpha = 1.2 every 10 epochs while clean accuracy stays within 0.05 of the
start and divided by it otherwise.
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
    "mm-bd",
    family="additive",
    paper="Wang et al., MM-BD: Post-Training Detection of Backdoor Attacks with "
    "Arbitrary Backdoor Pattern Types (IEEE S&P 2024)",
    aliases=("mmbd",),
)
@dataclass(frozen=True)
class MMBD(Defense):
    lam: float = setting(0.5, 0, 1e6)
    alpha: float = setting(1.2, 1, 100)
    acc_reduction: float = setting(0.05, 0, 1)
    adapt_every: int = setting(10, 1, 100_000)
    epochs: int = setting(50, 1, 100_000)
    lr: float = setting(1e-3, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        with torch.no_grad():
            reference = model.eval()(pixels.normalize(pixels.x))
        bounds = install_bounds(model, pixels.normalize(pixels.x[:1]))
        with torch.no_grad():
            for b, stats in zip(bounds, layers_statistics(model, bounds, data.clean, ctx.device), strict=True):
                b.bound.fill_(layer_moments(stats)[0])
        report = train_bounds(
            model,
            bounds,
            pixels,
            ctx,
            loss_fn=lambda logits, idx, y: F.mse_loss(logits, reference[idx]),
            penalty_fn=lambda b: b.norm(p=2),
            lam=self.lam,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            alpha=self.alpha,
            acc_reduction=self.acc_reduction,
            adapt_every=self.adapt_every,
            description="MM-BD activation bounds",
        )
        ctx.report(**report)
        return model.eval()
