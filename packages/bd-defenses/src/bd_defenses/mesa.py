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
from bd_core.data.pixels import Pixels
from bd_core.progress import Steps

from bd_defenses.base import Context, Defense, MitigationData, check_between, check_positive
from bd_defenses.registry import register
from bd_defenses.trigger_distribution import ASSUMES, check_assumptions, fit_trigger_distribution
from bd_defenses.unlearning import unlearn


@register("mesa", family="synthesis", paper="Qiao et al., Defending Neural Backdoors via Generative Distribution "
          "Modeling (NeurIPS 2019); reviewed only", needs=ASSUMES, benchmarked=False)
@dataclass(frozen=True)
class MESA(Defense):
    target: int = -1  # required: MESA's assumption
    trigger_size: int = 3
    location: str = "bottom-right"
    levels: str = "0.5,0.7,0.9"  # staircase of success levels beta
    entropy_weight: float = 0.1
    steps: int = 300  # generator updates per level
    gen_batch: int = 64
    gen_lr: float = 1e-3
    patch_ratio: float = 0.2
    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 256

    def __post_init__(self) -> None:
        betas = self.betas()
        if not betas or not all(0 < b < 1 for b in betas):
            raise ValueError(f"levels must be comma-separated values in (0, 1), got {self.levels!r}")
        check_between("patch_ratio", self.patch_ratio, 0.0, 1.0)
        check_between("entropy_weight", self.entropy_weight, 0.0, 100.0)
        check_positive(steps=self.steps, gen_batch=self.gen_batch, gen_lr=self.gen_lr, epochs=self.epochs, lr=self.lr,
                       batch_size=self.batch_size)

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
            dist = fit_trigger_distribution(model, pixels, self.target, self.trigger_size, self.location, self.betas(),
                                            self.entropy_weight, self.steps, self.gen_batch, self.gen_lr, g, tick)
        for p in model.parameters():
            p.requires_grad_(True)
        unlearn(model, data.clean, ctx, dist.stamp, ratio=self.patch_ratio, epochs=self.epochs, lr=self.lr,
                batch_size=self.batch_size, description="MESA model patching")
        ctx.report(levels=list(self.betas()), generator_success=[round(s, 4) for s in dist.success])
        return model
