"""FST, Feature Shift Tuning (Min et al., NeurIPS 2023): re-initialise the classification head
and fine-tune the whole model with CE + alpha * <w_orig, w_new>, projecting the new head
back to the original head's norm after every step, so the features must shift away from the
backdoored head's direction (survey Sec. 4; alpha 0.2 / 0.01 / 0.001 on CIFAR-10 / GTSRB /
Tiny-ImageNet; 15 epochs, SGD lr 0.01 momentum 0.9, as the survey's fork runs it: its script's
argparse default of 15 epochs overrides the 10 of its config file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.models import anatomy

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.finetune import finetune
from bd_defenses.registry import register

ALPHA_BY_DATASET = {"cifar10": 0.2, "gtsrb": 0.01, "tiny-imagenet": 0.001}


def head_layers(model: nn.Module) -> list[nn.Linear]:
    classifier = anatomy(model).classifier[1]
    return [m for m in classifier.modules() if isinstance(m, nn.Linear)]


@register(
    "fst",
    family="fine-tuning",
    paper="Min et al., Towards Stable Backdoor Purification through Feature Shift Tuning (NeurIPS 2023)",
)
@dataclass(frozen=True)
class FST(Defense):
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")  # all its training is finetune()
    alpha: float = setting(-1.0, -1, 100)  # < 0: the survey's value for the dataset (0.2 where it gives none)
    epochs: int = setting(15, 1, 100_000)
    lr: float = setting(0.01, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        alpha = self.alpha if self.alpha >= 0 else ALPHA_BY_DATASET.get(data.clean.info.name, 0.2)
        layers = head_layers(model)
        originals = [layer.weight.detach().clone() for layer in layers]
        norms = [w.norm() for w in originals]
        torch.manual_seed(ctx.seed)
        for layer in layers:
            layer.reset_parameters()

        def step(m: nn.Module, x, y):
            inner = sum((w0 * layer.weight).sum() for w0, layer in zip(originals, layers, strict=True))
            return F.cross_entropy(m(x), y) + alpha * inner

        @torch.no_grad()
        def keep_norm() -> None:
            for layer, n in zip(layers, norms, strict=True):
                layer.weight.mul_(n / layer.weight.norm().clamp_min(1e-12))

        losses = finetune(
            model,
            data.clean,
            ctx,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=0.0,
            step=step,
            description="FST feature shift tuning",
            after_step=keep_norm,
        )
        with torch.no_grad():
            cos = [
                float(F.cosine_similarity(w0.flatten(), layer.weight.flatten(), dim=0))
                for w0, layer in zip(originals, layers, strict=True)
            ]
        ctx.report(
            alpha=alpha,
            head_layers=len(layers),
            final_loss=round(losses[-1], 4),
            head_norm_ratio=[
                round(float(layer.weight.detach().norm() / n), 6) for layer, n in zip(layers, norms, strict=True)
            ],
            head_cosine_to_original=[round(c, 4) for c in cos],
        )
        return model
