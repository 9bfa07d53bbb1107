"""FT: fine-tune all weights on the clean mitigation set (Liu et al., 2018, the
fine-tuning baseline of Fine-Pruning; BackdoorBench's `ft` recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn as nn

from bd_defenses.base import Context, Defense, MitigationData, check_positive
from bd_defenses.finetune import finetune
from bd_defenses.registry import register


@register("ft", family="fine-tuning", paper="Liu et al., Fine-Pruning (RAID 2018): fine-tuning baseline")
@dataclass(frozen=True)
class FT(Defense):
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")  # all its training is finetune()
    tune: ClassVar[tuple[dict[str, Any], ...]] = ({"lr": 0.005}, {"lr": 0.01},
                                                  {"lr": 0.02})  # --tune, mildest first: learning rate
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        check_positive(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        losses = finetune(
            model, data.clean, ctx, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            momentum=self.momentum, weight_decay=self.weight_decay, description="FT fine-tuning",
        )
        ctx.report(epochs=self.epochs, first_loss=round(losses[0], 4), final_loss=round(losses[-1], 4))
        return model
