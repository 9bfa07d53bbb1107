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
from bd_core.data.batches import clean_batches
from bd_core.progress import make_progress
from bd_core.train import index_batches

from bd_defenses.adversarial import pgd_linf
from bd_defenses.base import Context, Defense, MitigationData, check_positive
from bd_defenses.pixels import Pixels
from bd_defenses.registry import register


@register("pbe", family="adversarial", paper="Mu et al., Progressive Backdoor Erasing via Connecting Backdoor and Adversarial Attacks (CVPR 2023)")
@dataclass(frozen=True)
class PBE(Defense):
    eps: float = 0.02
    step_scale: float = 5.0  # PGD step = eps / step_scale
    iterations: int = 7
    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_positive(eps=self.eps, step_scale=self.step_scale, iterations=self.iterations, epochs=self.epochs,
                       lr=self.lr, batch_size=self.batch_size)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        low, high = Pixels.of(data.clean, ctx.device).bounds()
        make_batch = clean_batches(data.clean, data.augment(), ctx.device)  # augmented, as the authors' loader
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        g = ctx.generator(10)
        flipped, gain = 0.0, 0.0
        with make_progress() as progress:
            task = progress.add_task("PBE adversarial erasing", total=self.epochs, status="")
            for _ in range(self.epochs):
                changed, seen, gain = 0, 0, 0.0
                for idx in index_batches(len(data.clean), self.batch_size, g):  # adversarial pass
                    xn, y = (t.to(ctx.device) for t in make_batch(idx, g))
                    model.eval()
                    adv = pgd_linf(model, xn, y, low, high, self.eps, self.eps / self.step_scale, self.iterations, g)
                    with torch.no_grad():
                        gain += float(F.cross_entropy(model(adv), y, reduction="sum") - F.cross_entropy(model(xn), y, reduction="sum"))
                    model.train()
                    logits = model(adv)
                    changed += int((logits.argmax(1) != y).sum())
                    seen += len(y)
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(logits, y).backward()
                    opt.step()
                for idx in index_batches(len(data.clean), self.batch_size, g):  # clean pass
                    xn, y = (t.to(ctx.device) for t in make_batch(idx, g))
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(xn), y).backward()
                    opt.step()
                flipped, gain = changed / max(1, seen), gain / max(1, seen)
                progress.update(task, advance=1, status=f"adversarial error {flipped:.2f}")
        model.eval()
        ctx.report(final_adversarial_error=round(flipped, 4), final_adversarial_loss_gain=round(gain, 5))
        return model
