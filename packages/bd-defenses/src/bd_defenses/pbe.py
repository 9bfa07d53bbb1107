"""PBE, PGD-based Backdoor Erasing (Mu et al., CVPR 2023): adversarial examples of a
backdoored model tend toward its target class, so fine-tuning on them with their true labels
(alternated with a clean pass) erases the backdoor. Defaults of the authors' code in the
survey's fork: L-inf PGD eps 0.02 (normalized units), step eps/5, 7 iterations, 20 epochs,
SGD lr 0.01."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.batches import clean_batches
from bd_core.data.pixels import Pixels
from bd_core.train import index_batches, optimize

from bd_defenses.adversarial import pgd_linf
from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import register


@register(
    "pbe",
    family="adversarial",
    paper="Mu et al., Progressive Backdoor Erasing via Connecting Backdoor and Adversarial Attacks (CVPR 2023)",
)
@dataclass(frozen=True)
class PBE(Defense):
    eps: float = setting(0.02, above=0, high=1)
    step_scale: float = setting(5.0, above=0, high=1000)  # PGD step = eps / step_scale
    iterations: int = setting(7, 1, 100_000)
    epochs: int = setting(20, 1, 100_000)
    lr: float = setting(0.01, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        low, high = Pixels.of(data.clean, ctx.device).bounds()
        make_batch = clean_batches(data.clean, data.augment(), ctx.device)  # augmented, as the authors' loader
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        g = ctx.generator(10)
        n = len(data.clean)
        epoch = {"adversarial": True, "changed": 0, "seen": 0, "gain": 0.0}
        result = {"flipped": 0.0, "gain": 0.0}

        def adversarial_pass_then_clean_pass():
            """Each epoch trains on PGD examples of every batch, then on every clean batch."""
            epoch.update(adversarial=True, changed=0, seen=0, gain=0.0)
            for idx in index_batches(n, self.batch_size, g):
                xn, y = (t.to(ctx.device) for t in make_batch(idx, g))
                model.eval()
                adv = pgd_linf(model, xn, y, low, high, self.eps, self.eps / self.step_scale, self.iterations, g)
                with torch.no_grad():
                    epoch["gain"] += float(
                        F.cross_entropy(model(adv), y, reduction="sum") - F.cross_entropy(model(xn), y, reduction="sum")
                    )
                model.train()
                yield adv, y
            epoch["adversarial"] = False
            for idx in index_batches(n, self.batch_size, g):
                yield make_batch(idx, g)

        def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = model(x)
            if epoch["adversarial"]:
                epoch["changed"] += int((logits.argmax(1) != y).sum())
                epoch["seen"] += len(y)
            return F.cross_entropy(logits, y)

        def adversarial_error(_epoch: int) -> None:
            seen = max(1, epoch["seen"])
            result.update(flipped=epoch["changed"] / seen, gain=epoch["gain"] / seen)

        optimize(
            loss,
            adversarial_pass_then_clean_pass,
            opt,
            epochs=self.epochs,
            model=model,
            device=ctx.device,
            after_epoch=adversarial_error,
            description="PBE adversarial erasing",
        )
        flipped, gain = result["flipped"], result["gain"]
        model.eval()
        ctx.report(final_adversarial_error=round(flipped, 4), final_adversarial_loss_gain=round(gain, 5))
        return model
