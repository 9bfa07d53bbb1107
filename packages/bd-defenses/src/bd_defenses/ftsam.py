"""FT-SAM (Zhu et al., ICCV 2023): fine-tune with adaptive sharpness-aware minimisation.
Each step first moves the weights to the worst case within an adaptive ball of radius rho,
e = rho * |w|^2 g / || |w| g ||, takes the gradient there, then steps from the original
weights (survey Sec. 4.1; rho 2.0, label smoothing 0.1, SGD lr 0.01, 100 epochs). The pass at
the perturbed weights leaves BatchNorm's running statistics alone (the authors' SAM code), and
the loss smooths labels as that code does: 1 - eps on the true class, eps / (K - 1) on each of
the others (torch's `label_smoothing` gives 1 - eps + eps / K and eps / K; on the parity model
the two differ by 8 % of a step, docs/parity.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.batches import clean_batches
from bd_core.train import optimize, shuffled_batches

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import register


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """The SAM reference code's label smoothing, which FT-SAM's authors and the survey's code use:
    KL(t || softmax(logits)) with t = 1 - eps on the true class and eps / (K - 1) elsewhere,
    summed over classes and averaged over the batch."""
    log_prob = F.log_softmax(logits, dim=1)
    target = torch.full_like(log_prob, eps / (logits.shape[1] - 1))
    target.scatter_(1, labels.unsqueeze(1), 1.0 - eps)
    return F.kl_div(log_prob, target, reduction="none").sum(1).mean()


def adaptive_perturbation(params: list[nn.Parameter], rho: float, eta: float = 0.0) -> list[torch.Tensor]:
    """ASAM's ascent step for each parameter (its .grad must be set): e = rho * T^2 g / ||T g||,
    T = |w| + eta. ||T^-1 e|| = rho: the radius is measured in the adaptive metric."""
    scaled = [(p.detach().abs() + eta) * p.grad for p in params]
    norm = torch.norm(torch.stack([s.norm() for s in scaled])).clamp_min(1e-12)
    return [(p.detach().abs() + eta) * s * (rho / norm) for p, s in zip(params, scaled, strict=True)]


@contextmanager
def running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """BatchNorm keeps normalising with the batch's statistics but does not fold them into its
    running estimates (momentum 0), as SAM's reference code does for the pass at w + e."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


class SharpnessAwareLoss:
    """A step for `optimize`: the loss of a batch at the worst-case weights w + e of the adaptive
    ball; `restore` moves the weights back to w before the optimizer steps with that gradient."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], rho: float, label_smoothing: float) -> None:
        self.model, self.params, self.rho, self.label_smoothing = model, params, rho, label_smoothing
        self.e: list[torch.Tensor] = []
        self.radius = 0.0

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return smoothed_cross_entropy(self.model(x), y, self.label_smoothing)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.loss(x, y).backward()
        self.e = adaptive_perturbation(self.params, self.rho)
        with torch.no_grad():
            self.radius = float(
                torch.norm(
                    torch.stack(
                        [(ei / p.abs().clamp_min(1e-12)).norm() for ei, p in zip(self.e, self.params, strict=True)]
                    )
                )
            )
            for p, ei in zip(self.params, self.e, strict=True):
                p.add_(ei)
                p.grad = None  # the update uses the gradient at w + e alone
        with running_stats_frozen(self.model):  # the perturbed weights' statistics must not be kept
            return self.loss(x, y)

    def restore(self) -> None:
        with torch.no_grad():
            for p, ei in zip(self.params, self.e, strict=True):
                p.sub_(ei)


@register(
    "ft-sam",
    family="fine-tuning",
    paper="Zhu et al., Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization (ICCV 2023)",
    aliases=("ftsam", "sam"),
)
@dataclass(frozen=True)
class FTSAM(Defense):
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")  # its step (ascent included) under autocast
    tune: ClassVar[tuple[dict[str, Any], ...]] = (
        {"lr": 0.005},
        {"lr": 0.01},
        {"lr": 0.02},
    )  # --tune, mildest first: learning rate
    rho: float = setting(2.0, above=0, high=100)
    label_smoothing: float = setting(0.1, 0, 0.5)
    epochs: int = setting(100, 1, 100_000)
    lr: float = setting(0.01, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)
    weight_decay: float = setting(5e-4, 0, 1)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        make_batch = clean_batches(data.clean, data.augment(), ctx.device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        sam = SharpnessAwareLoss(model, params, self.rho, self.label_smoothing)
        batches = shuffled_batches(make_batch, len(data.clean), self.batch_size, ctx.generator(9))
        losses = optimize(
            sam,
            batches,
            opt,
            epochs=self.epochs,
            model=model,
            scheduler=sched,
            device=ctx.device,
            before_update=sam.restore,
            description="FT-SAM fine-tuning",
            precision=ctx.precision,
        )
        model.eval()
        ctx.report(rho=self.rho, last_perturbation_radius=round(sam.radius, 4), final_sharp_loss=round(losses[-1], 4))
        return model
