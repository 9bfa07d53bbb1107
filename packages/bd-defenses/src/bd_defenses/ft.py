"""FT: fine-tune all weights on the clean mitigation set (Liu et al., 2018, the
fine-tuning baseline of Fine-Pruning; BackdoorBench's `ft` recipe).

Two constraints on θ for low-data regimes (the survey's open challenge 1), both off by default:
`anchor` adds the L2-SP penalty anchor/2 * ||θ - θ_0||² toward the attacked model's weights
(Li et al., ICML 2018), and `update=bn+head` trains only the BatchNorm layers and the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import option, setting
from bd_core.models import anatomy
from bd_core.train import StepFn, cross_entropy_step

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
    anchor: float = setting(0.0, 0, 1e6, neutral=True)  # L2-SP weight toward the attacked weights; 0: the paper's
    update: str = option("all", neutral=True)  # or "bn+head": only BatchNorm layers and the classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update not in UPDATES:
            raise ValueError(f"update must be one of {', '.join(UPDATES)}, got {self.update!r}")

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        params = trained_parameters(model, self.update)
        start = {id(p): p.detach().clone() for p in params}
        losses = finetune(
            model,
            data.clean,
            ctx,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            step=anchored_step(params, start, self.anchor) if self.anchor else cross_entropy_step,
            params=None if self.update == "all" else params,
            description="FT fine-tuning",
        )
        moved = torch.sqrt(sum(((p.detach() - start[id(p)]) ** 2).sum() for p in params)).item()
        ctx.report(
            epochs=self.epochs,
            first_loss=round(losses[0], 4),
            final_loss=round(losses[-1], 4),
            trained_parameters=sum(p.numel() for p in params),
            distance_from_attacked=round(moved, 4),
        )
        return model


UPDATES = ("all", "bn+head")


def trained_parameters(model: nn.Module, update: str) -> list[nn.Parameter]:
    """The parameters FT trains: all, or those of the BatchNorm layers and the classifier."""
    if update == "all":
        return [p for p in model.parameters() if p.requires_grad]
    _, head = anatomy(model).classifier
    chosen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] + [head]
    return list({id(p): p for m in chosen for p in m.parameters() if p.requires_grad}.values())


def anchored_step(params: list[nn.Parameter], start: dict[int, torch.Tensor], anchor: float) -> StepFn:
    """Cross-entropy plus the L2-SP penalty anchor/2 * ||θ - θ_0||² over the trained parameters."""

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        penalty = sum(((p - start[id(p)]) ** 2).sum() for p in params)
        return F.cross_entropy(model(x), y) + anchor / 2 * penalty

    return step
