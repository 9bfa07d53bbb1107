"""FT: fine-tune all weights on the clean mitigation set (Liu et al., 2018, the
fine-tuning baseline of Fine-Pruning; BackdoorBench's `ft` recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn as nn
from bd_core.config import setting

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.finetune import finetune
from bd_defenses.registry import register


@register("ft", family="fine-tuning", paper="Liu et al., Fine-Pruning (RAID 2018): fine-tuning baseline")
@dataclass(frozen=True)
class FT(Defense):
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")  # all its training is finetune()
    tune: ClassVar[tuple[dict[str, Any], ...]] = (
        {"lr": 0.005},
        {"lr": 0.01},
        {"lr": 0.02},
    )  # --tune, mildest first: learning rate
    epochs: int = setting(100, 1, 100_000)
    batch_size: int = setting(256, 1, 1_000_000)
    lr: float = setting(0.01, above=0, high=1)
    momentum: float = setting(0.9, 0, below=1)
    weight_decay: float = setting(5e-4, 0, 1)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        losses = finetune(
            model,
            data.clean,
            ctx,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            description="FT fine-tuning",
        )
        ctx.report(epochs=self.epochs, first_loss=round(losses[0], 4), final_loss=round(losses[-1], 4))
        return model
