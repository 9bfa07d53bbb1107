"""AWM, Adversarial Weight Masking (Chai & Chen, NeurIPS 2022).

ANP's weight perturbation is replaced by a universal input perturbation delta (survey
Eq. 7): each epoch, delta is found by gradient ascent on the loss with respect to the model's
own predictions and projected onto the L1 ball of radius trigger_norm. The soft mask then
minimises lambda1 * L(D_m) + lambda2 * L(D_m + delta) + lambda3 * ||m||_1 (Eq. 8) and is kept
soft (no binarisation). Defaults as the authors' code in the survey's fork: 20 epochs,
lr 1e-2 decayed by 0.9 per epoch, delta step 10, trigger_norm 1000.
"""

from __future__ import annotations

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
    "awm",
    family="masking",
    paper="Chai & Chen, One-shot Neural Backdoor Erasing via Adversarial Weight Masking (NeurIPS 2022)",
    aliases=("awn",),
)
@dataclass(frozen=True)
class AWM(Defense):
    requires: ClassVar[dict[str, str]] = {"conv": "it learns a mask over every convolution's weights"}
    lambda1: float = setting(0.9, 0, 1)  # clean loss
    lambda2: float = setting(0.1, 0, 1)  # loss under the universal perturbation
    lambda3: float = setting(1e-7, 0, 1)  # L1 sparsity of the mask
    epochs: int = setting(20, 1, 100_000)
    lr: float = setting(1e-2, above=0, high=1)
    lr_decay: float = setting(0.9, 0, 1)
    trigger_lr: float = setting(10.0, above=0, high=10_000)
    trigger_norm: float = setting(1000.0, above=0, high=1e9)  # L1 radius of delta, in pixel units summed over the image
    batch_size: int = setting(256, 1, 1_000_000)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        wrapped = masked_model(model)
        masks = [m.mask for m in wrapped.values()]
        opt = torch.optim.SGD(masks, lr=self.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.lr_decay)
        g = ctx.generator(4)
        delta = torch.zeros_like(pixels.x[:1])

        def batches_against_new_perturbation():
            # each epoch first learns a universal adversarial perturbation, then trains against it
            nonlocal delta
            delta = self.universal_perturbation(model, pixels, g)
            return epoch_batches(pixels, self.batch_size, g)()

        def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            natural = F.cross_entropy(model(pixels.normalize(x)), y)
            robust = F.cross_entropy(model(pixels.normalize((x + delta).clamp(0, 1))), y)
            l1 = sum(m.abs().sum() for m in masks)
            return self.lambda1 * natural + self.lambda2 * robust + self.lambda3 * l1

        optimize(
            loss,
            batches_against_new_perturbation,
            opt,
            epochs=self.epochs,
            scheduler=sched,
            after_step=lambda: clip_masks(wrapped),
            description="AWM mask optimisation",
        )
        delta_l1 = float(delta.abs().sum())
        ctx.report(delta_l1=round(delta_l1, 3), **mask_summary(wrapped))
        return bake_masks(model)

    def universal_perturbation(self, model: nn.Module, pixels: Pixels, g: torch.Generator) -> torch.Tensor:
        """One ascent step per batch on a shared delta against the model's own labels, then L1 projection."""
        delta = torch.zeros_like(pixels.x[:1], requires_grad=True)

        def ascent(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                own = model(pixels.normalize(x)).argmax(1)
            return -F.cross_entropy(model(pixels.normalize((x + delta).clamp(0, 1))), own)

        optimize(
            ascent,
            epoch_batches(pixels, self.batch_size, g),
            torch.optim.SGD([delta], lr=self.trigger_lr),
            epochs=1,
            tick=lambda: None,
        )
        with torch.no_grad():
            delta *= min(1.0, self.trigger_norm / max(float(delta.abs().sum()), 1e-12))
        return delta.detach()
