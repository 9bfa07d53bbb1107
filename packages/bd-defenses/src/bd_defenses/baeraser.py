"""BAERASER (Liu et al., INFOCOM 2022), backdoor erasing by machine unlearning; reviewed by the
survey, not benchmarked: like MESA it assumes the target class (and here the trigger's size
and location), which bd asks for explicitly.

Trigger recovery: a maximum-entropy generative model of patch triggers for the target (shared
with MESA). Unlearning: gradient *ascent* on the target-class loss of stamped clean images
(capped, so it cannot diverge), with a dynamic penalty: the weight of the clean loss doubles
after an epoch that costs more than `tolerance` of clean accuracy on D_m, and halves back
toward its start otherwise, against catastrophic forgetting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels, epoch_batches
from bd_core.progress import Steps
from bd_core.train import optimize

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.pixels import accuracy
from bd_defenses.registry import register
from bd_defenses.trigger_distribution import ASSUMES, check_assumptions, fit_trigger_distribution


@register(
    "baeraser",
    family="synthesis",
    paper="Liu et al., Backdoor Defense with Machine Unlearning (IEEE INFOCOM 2022); reviewed only",
    needs=ASSUMES,
    benchmarked=False,
    aliases=("ba-eraser",),
)
@dataclass(frozen=True)
class BAERASER(Defense):
    target: int = -1
    trigger_size: int = 3
    location: str = "bottom-right"
    entropy_weight: float = setting(0.1, 0, 100)
    success_level: float = setting(0.9, 0.01, 0.99)
    steps: int = setting(300, 1, 100_000)
    gen_batch: int = setting(64, 1, 1_000_000)
    gen_lr: float = setting(1e-3, above=0, high=1)
    epochs: int = setting(10, 1, 100_000)
    # gradient ascent diverges at 1e-2 on small models (measured; docs/defenses.md)
    lr: float = setting(1e-3, above=0, high=1)
    # stop ascending once the target-class CE of stamped images exceeds this
    ascent_cap: float = setting(5.0, above=0, high=1000)
    penalty: float = setting(1.0, above=0, high=1e6)  # initial weight of the clean loss
    tolerance: float = setting(0.05, 0, 1)
    batch_size: int = setting(256, 1, 1_000_000)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        check_assumptions(
            "BAERASER", self.target, data.num_classes, self.trigger_size, pixels.x.shape[-1], self.location
        )
        g = ctx.generator(16)
        base = accuracy(model, pixels)
        with Steps("BAERASER trigger recovery + unlearning", self.steps + self.epochs) as tick:
            dist = fit_trigger_distribution(
                model,
                pixels,
                self.target,
                self.trigger_size,
                self.location,
                (self.success_level,),
                self.entropy_weight,
                self.steps,
                self.gen_batch,
                self.gen_lr,
                g,
                tick,
            )
            for p in model.parameters():
                p.requires_grad_(True)
            opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9)
            state = {"mu": self.penalty, "hits": 0, "hit": 1.0}

            def erase(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                logits = model(pixels.normalize(dist.stamp(x, g)))
                state["hits"] += int((logits.argmax(1) == self.target).sum())
                ascent = -F.cross_entropy(logits, torch.full_like(y, self.target)).clamp(max=self.ascent_cap)
                # normalised so a growing penalty shifts the balance, not the step size
                mu = state["mu"]
                return (ascent + mu * F.cross_entropy(model(pixels.normalize(x)), y)) / (1 + mu)

            def adapt_penalty(_epoch: int) -> None:
                """Double the clean-loss penalty while clean accuracy is below tolerance, else halve it."""
                state["hit"], state["hits"] = state["hits"] / len(pixels), 0
                dropped = accuracy(model, pixels) < base - self.tolerance
                state["mu"] = state["mu"] * 2 if dropped else max(self.penalty, state["mu"] / 2)

            # eval mode: BN statistics stay those of the training data while unlearning
            optimize(
                erase,
                epoch_batches(pixels, self.batch_size, g),
                opt,
                epochs=self.epochs,
                model=model,
                training=False,
                after_epoch=adapt_penalty,
                tick=tick,
            )
        mu, hit = state["mu"], state["hit"]
        ctx.report(
            generator_success=round(dist.success[0], 4),
            final_trigger_target_rate=round(hit, 4),
            final_penalty=mu,
            clean_acc_before=round(base, 4),
            clean_acc_after=round(accuracy(model, pixels), 4),
        )
        return model
