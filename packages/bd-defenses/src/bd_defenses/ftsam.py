"""FT-SAM (Zhu et al., ICCV 2023): fine-tune with adaptive sharpness-aware minimisation.
Each step first moves the weights to the worst case within an adaptive ball of radius rho,
e = rho * |w|^2 g / || |w| g ||, takes the gradient there, then steps from the original
weights (survey Sec. 4.1; rho 2.0, label smoothing 0.1, SGD lr 0.01, 100 epochs). The pass at
the perturbed weights leaves BatchNorm's running statistics alone (the authors' SAM code)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.data.batches import clean_batches
from bd_core.progress import make_progress
from bd_core.train import index_batches

from bd_defenses.base import Context, Defense, MitigationData, check_between, check_positive
from bd_defenses.registry import register


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


@register("ft-sam", family="fine-tuning", paper="Zhu et al., Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization (ICCV 2023)", aliases=("ftsam", "sam"))
@dataclass(frozen=True)
class FTSAM(Defense):
    rho: float = 2.0
    label_smoothing: float = 0.1
    epochs: int = 100
    lr: float = 0.01
    batch_size: int = 256
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        check_between("label_smoothing", self.label_smoothing, 0.0, 1.0)
        check_positive(rho=self.rho, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        make_batch = clean_batches(data.clean, data.augment(), ctx.device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        g = ctx.generator(9)
        loss_fn = lambda x, y: F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing)  # noqa: E731
        radius = 0.0
        model.train()
        with make_progress() as progress:
            task = progress.add_task("FT-SAM fine-tuning", total=self.epochs, status="")
            for _ in range(self.epochs):
                for idx in index_batches(len(data.clean), self.batch_size, g):
                    x, y = make_batch(idx, g)
                    x, y = x.to(ctx.device), y.to(ctx.device)
                    opt.zero_grad(set_to_none=True)
                    loss_fn(x, y).backward()
                    e = adaptive_perturbation(params, self.rho)
                    with torch.no_grad():
                        radius = float(torch.norm(torch.stack([(ei / p.abs().clamp_min(1e-12)).norm()
                                                               for ei, p in zip(e, params, strict=True)])))
                        for p, ei in zip(params, e, strict=True):
                            p.add_(ei)
                    opt.zero_grad(set_to_none=True)
                    with running_stats_frozen(model):  # the perturbed weights' statistics must not be kept
                        sharp = loss_fn(x, y)
                    sharp.backward()
                    with torch.no_grad():
                        for p, ei in zip(params, e, strict=True):
                            p.sub_(ei)
                    opt.step()
                sched.step()
                progress.update(task, advance=1, status=f"loss {float(sharp.detach()):.3f}")
        model.eval()
        ctx.report(rho=self.rho, last_perturbation_radius=round(radius, 4), final_sharp_loss=round(float(sharp.detach()), 4))
        return model
