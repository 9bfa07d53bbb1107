"""SAU, Shared Adversarial Unlearning (Wei et al., NeurIPS 2023).

Shared adversarial examples, which fool both the current model and the fixed original model
into the same class, are the ones a backdoor can explain. Each batch: L-inf PGD (radius 0.2,
step 0.2, 5 steps, from the radius) on
    beta1 * (-CE on samples not yet fooled, for both models) + beta2 * JS(p_model, p_ref)
over samples not yet shared; then the model minimises
    lambda1 CE(x, y) + lambda2 CE(x_adv, y) + lambda3 L_shared,
where L_shared pushes the current model away from the original model's adversarial label
on samples that fool the original model (survey Sec. 4.3, Eq. with JS). Defaults of
BackdoorBench: Adam lr 1e-4, 100 rounds, lambda (1, 0, 1), beta (0.01, 1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels, epoch_batches
from bd_core.train import optimize
from torch import Tensor

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import register


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Per-sample Jensen-Shannon divergence of two probability rows."""
    p, q = p.clamp_min(1e-8), q.clamp_min(1e-8)
    m = 0.5 * (p + q)
    return 0.5 * (p * (p.log() - m.log())).sum(1) + 0.5 * (q * (q.log() - m.log())).sum(1)


@register(
    "sau",
    family="adversarial",
    paper="Wei et al., Shared Adversarial Unlearning: Backdoor Mitigation by "
    "Unlearning Shared Adversarial Examples (NeurIPS 2023)",
)
@dataclass(frozen=True)
class SAU(Defense):
    tune: ClassVar[tuple[dict[str, Any], ...]] = (
        {"trigger_norm": 0.1},
        {"trigger_norm": 0.2},
        {"trigger_norm": 0.3},
    )  # --tune, mildest first: perturbation budget
    rounds: int = setting(100, 1, 100_000)
    lr: float = setting(1e-4, above=0, high=1)
    trigger_norm: float = setting(0.2, 0, 1)  # L-inf radius in pixel units
    adv_lr: float = setting(0.2, above=0, high=1000)
    adv_steps: int = setting(5, 1, 100_000)
    beta1: float = setting(0.01, 0, 100)
    beta2: float = setting(1.0, 0, 100)
    lambda1: float = setting(1.0, 0, 100)
    lambda2: float = setting(0.0, 0, 100)
    lambda3: float = setting(1.0, 0, 100)
    batch_size: int = setting(256, 1, 1_000_000)
    # keep perturbed images valid ([0, 1] pixels). The authors' code (BackdoorBench's sau.py) adds
    # the perturbation to the denormalised image without clamping; false reproduces that.
    valid_images: bool = True

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        model.eval()
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        totals = {"shared": 0, "gain": 0.0, "seen": 0}
        stats = {"shared": 0.0, "loss_gain": 0.0}

        def shared_adversarial_loss(x: Tensor, y: Tensor) -> Tensor:
            delta, shared = self.shared_perturbation(model, reference, pixels, x, y)
            adv = pixels.normalize(self.perturbed(x, delta))
            logits, adv_logits = model(pixels.normalize(x)), model(adv)
            with torch.no_grad():
                ref_adv = reference(adv).argmax(1)
                fooled_ref = ref_adv != y
                totals["gain"] += float(F.cross_entropy(adv_logits, y) - F.cross_entropy(logits, y)) * len(y)
            loss = self.lambda1 * F.cross_entropy(logits, y) + self.lambda2 * F.cross_entropy(adv_logits, y)
            if fooled_ref.any():
                probs = adv_logits.softmax(1)
                on_ref = probs.gather(1, ref_adv[:, None]).squeeze(1)[fooled_ref]
                loss_shared = (
                    (
                        -torch.log(1e-6 + (1 - on_ref).clamp(max=0.999)).sum()
                        - torch.log(1 + 1e-6 - on_ref.clamp(min=0.001)).sum()
                    )
                    / 2
                    / len(y)
                )
                loss = loss + self.lambda3 * loss_shared
            totals["shared"] += int(shared.sum())
            totals["seen"] += len(y)
            return loss

        def round_statistics(_round: int) -> None:
            seen = max(1, totals["seen"])
            stats.update(shared=totals["shared"] / seen, loss_gain=totals["gain"] / seen)
            totals.update(shared=0, gain=0.0, seen=0)

        optimize(
            shared_adversarial_loss,
            epoch_batches(pixels, self.batch_size, ctx.generator(12)),
            opt,
            epochs=self.rounds,
            model=model,
            training=False,
            after_epoch=round_statistics,
            description="SAU shared adversarial unlearning",
        )
        ctx.report(
            final_shared_fraction=round(stats["shared"], 4), final_adversarial_loss_gain=round(stats["loss_gain"], 4)
        )
        return model

    def perturbed(self, x: Tensor, delta: Tensor) -> Tensor:
        return (x + delta).clamp(0, 1) if self.valid_images else x + delta

    def shared_perturbation(self, model, reference, pixels: Pixels, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """PGD toward shared adversarial examples; returns (delta, which samples are shared)."""
        delta = torch.full_like(x, self.trigger_norm)  # BackdoorBench's 'max' start
        with torch.no_grad():
            own, own_ref = model(pixels.normalize(x)).argmax(1), reference(pixels.normalize(x)).argmax(1)
        shared = torch.zeros_like(y, dtype=torch.bool)
        for _ in range(self.adv_steps):
            delta.requires_grad_(True)
            xn = pixels.normalize(self.perturbed(x, delta))
            logits, logits_ref = model(xn), reference(xn)
            label, label_ref = logits.argmax(1), logits_ref.argmax(1)
            fooled, fooled_ref = label != own, label_ref != own_ref
            shared = fooled & fooled_ref & (label == label_ref)
            adv = (F.cross_entropy(logits, y, reduction="none") * ~fooled).sum()
            adv = adv + (F.cross_entropy(logits_ref, y, reduction="none") * ~fooled_ref).sum()
            loss_adv = -adv / 2 / len(y)
            js = (js_divergence(logits.softmax(1), logits_ref.softmax(1)) * ~shared).sum() / len(y)
            loss = self.beta1 * loss_adv + self.beta2 * js
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() - self.adv_lr * grad.sign()).clamp(-self.trigger_norm, self.trigger_norm)
            if bool(shared.all()):
                break
        return delta.detach(), shared
