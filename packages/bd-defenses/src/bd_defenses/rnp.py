"""RNP, Reconstructive Neuron Pruning (Li et al., ICML 2023).

1. Unlearn: a copy of the model maximises the clean loss on the mitigation set (survey
   Eq. 9; SGD lr 1e-3, weight decay 5e-2, up to 20 epochs) until its accuracy there falls
   to the unlearn threshold (0.1).
2. Recover: on the unlearned copy, neuron masks minimise the clean loss (Eq. 10; SGD lr 0.2,
   20 epochs), clipped to [0, 1]. Backdoor neurons, which the unlearning left intact and
   the recovery does not need, end with low mask values.
3. Prune the *original* model's neurons in increasing mask order (threshold step 0.02)
   while clean accuracy on the defender's data drops by at most recovery_drop (0.02).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels, epoch_batches
from bd_core.train import optimize

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.masking import bake_masks, clip_masks, mask_scores, masked_model, prune_by_threshold
from bd_defenses.pixels import accuracy
from bd_defenses.registry import register


@register("rnp", family="masking", paper="Li et al., Reconstructive Neuron Pruning for Backdoor Defense (ICML 2023)")
@dataclass(frozen=True)
class RNP(Defense):
    requires: ClassVar[dict[str, str]] = {"conv": "it learns a mask over every convolution's output channels"}
    unlearn_threshold: float = setting(0.1, 0, 1)
    unlearn_lr: float = setting(1e-3, above=0, high=1)
    unlearn_epochs: int = setting(20, 1, 100_000)
    weight_decay: float = setting(5e-2, 0, 1)
    recovery_lr: float = setting(0.2, above=0, high=1)
    recovery_epochs: int = setting(20, 1, 100_000)
    recovery_drop: float = setting(0.02, 0, 1)
    threshold_step: float = setting(0.02, above=0, high=1)
    batch_size: int = setting(128, 1, 1_000_000)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        _, check, rule = data.selection_split(ctx.seed)
        check_pixels = Pixels.of(check, ctx.device)
        unlearned = copy.deepcopy(model)
        unlearn_acc, unlearn_epochs = self.unlearn(unlearned, pixels, ctx)
        recovery = masked_model(unlearned)
        self.recover(unlearned, recovery, pixels, ctx)
        scores = mask_scores(recovery)

        base = accuracy(model, check_pixels)
        wrapped = masked_model(model)
        thresholds = [round(i * self.threshold_step, 6) for i in range(int(1 / self.threshold_step))]
        threshold, pruned = prune_by_threshold(
            wrapped, scores, thresholds, lambda: accuracy(model, check_pixels) >= base - self.recovery_drop
        )
        ctx.report(
            unlearn_epochs=unlearn_epochs,
            unlearned_acc=round(unlearn_acc, 4),
            threshold=threshold,
            pruned=pruned,
            neurons=sum(int(s.numel()) for s in scores.values()),
            selection=rule,
            check_acc_before=round(base, 4),
            check_acc_after=round(accuracy(model, check_pixels), 4),
        )
        return bake_masks(model)

    def unlearn(self, model: nn.Module, pixels: Pixels, ctx: Context) -> tuple[float, int]:
        """Gradient ascent on the clean loss (train mode, as the paper) until accuracy <= threshold."""
        opt = torch.optim.SGD(model.parameters(), lr=self.unlearn_lr, momentum=0.9, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.unlearn_epochs)
        correct, reached = [0], [0.0, 0]  # correct this epoch; (accuracy, epoch) at the end of the last epoch

        def ascent(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = model(pixels.normalize(x))
            correct[0] += int((logits.argmax(1) == y).sum())
            return -F.cross_entropy(logits, y)

        def unlearned_enough(epoch: int) -> bool:
            reached[:] = [correct[0] / len(pixels), epoch]
            correct[0] = 0
            return reached[0] <= self.unlearn_threshold

        optimize(
            ascent,
            epoch_batches(pixels, self.batch_size, ctx.generator(2)),
            opt,
            epochs=self.unlearn_epochs,
            model=model,
            scheduler=sched,
            after_epoch=unlearned_enough,
            description="RNP unlearning",
            before_update=lambda: nn.utils.clip_grad_norm_(model.parameters(), max_norm=20),
        )
        model.eval()
        return reached[0], reached[1]

    def recover(self, model: nn.Module, wrapped, pixels: Pixels, ctx: Context) -> None:
        opt = torch.optim.SGD([m.mask for m in wrapped.values()], lr=self.recovery_lr, momentum=0.9)
        optimize(
            lambda x, y: F.cross_entropy(model(pixels.normalize(x)), y),
            epoch_batches(pixels, self.batch_size, ctx.generator(3)),
            opt,
            epochs=self.recovery_epochs,
            after_step=lambda: clip_masks(wrapped),
            description="RNP mask recovery",
        )
