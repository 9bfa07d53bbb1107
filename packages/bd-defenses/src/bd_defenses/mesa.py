"""MESA, Max-Entropy Staircase Approximator (Qiao et al., NeurIPS 2019); reviewed by the survey,
not benchmarked, because it assumes more than the survey's defender has: the target class
and the trigger's size (and here its location). bd asks for them explicitly.

A staircase of generators, one per success level beta, learns a maximum-entropy distribution
of patch triggers that send clean images to the target (see trigger_distribution.py); the
model is then patched by fine-tuning on the clean data with 20 % of each batch stamped with
sampled triggers and their true labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from bd_core.config import setting
from bd_core.data.pixels import Pixels
from bd_core.progress import Steps

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import register
from bd_defenses.trigger_distribution import ASSUMES, check_assumptions, fit_trigger_distribution
from bd_defenses.unlearning import unlearn


@register(
    "mesa",
    family="synthesis",
    paper="Qiao et al., Defending Neural Backdoors via Generative Distribution Modeling (NeurIPS 2019); reviewed only",
    needs=ASSUMES,
    benchmarked=False,
)
@dataclass(frozen=True)
class MESA(Defense):
    target: int = -1  # required: MESA's assumption
    trigger_size: int = setting(3, 1, 4096)
    location: str = "bottom-right"
    levels: str = "0.5,0.7,0.9"  # staircase of success levels beta
    entropy_weight: float = setting(0.1, 0, 100)
    steps: int = setting(300, 1, 100_000)  # generator updates per level
    gen_batch: int = setting(64, 1, 1_000_000)
    gen_lr: float = setting(1e-3, above=0, high=1)
    patch_ratio: float = setting(0.2, 0, 1)
    epochs: int = setting(20, 1, 100_000)
    lr: float = setting(0.01, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)

    def __post_init__(self) -> None:
        super().__post_init__()
        betas = self.betas()
        if not betas or not all(0 < b < 1 for b in betas):
            raise ValueError(f"levels must be comma-separated values in (0, 1), got {self.levels!r}")

    def betas(self) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in str(self.levels).split(",") if v.strip())
        except ValueError:
            return ()

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        check_assumptions("MESA", self.target, data.num_classes, self.trigger_size, pixels.x.shape[-1], self.location)
        g = ctx.generator(15)
        with Steps("MESA trigger distribution", self.steps * len(self.betas())) as tick:
            dist = fit_trigger_distribution(
                model,
                pixels,
                self.target,
                self.trigger_size,
                self.location,
                self.betas(),
                self.entropy_weight,
                self.steps,
                self.gen_batch,
                self.gen_lr,
                g,
                tick,
            )
        for p in model.parameters():
            p.requires_grad_(True)
        unlearn(
            model,
            data.clean,
            ctx,
            dist.stamp,
            ratio=self.patch_ratio,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            description="MESA model patching",
        )
        ctx.report(levels=list(self.betas()), generator_success=[round(s, 4) for s in dist.success])
        return model
