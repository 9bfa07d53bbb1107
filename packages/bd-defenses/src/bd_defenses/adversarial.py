"""Input-space adversarial examples for PBE: projected gradient ascent in normalized input
units, clamped to valid images."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bd_defenses.pixels import clamp_between


def pgd_linf(
    model: nn.Module,
    xn: Tensor,
    y: Tensor,
    low: Tensor,
    high: Tensor,
    eps: float,
    step: float,
    iters: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Untargeted L-inf PGD from a uniform random start: maximise CE(model(x + delta), y)."""
    noise = torch.rand(xn.shape, generator=generator).to(xn.device)
    delta = (noise * 2 - 1) * eps
    for _ in range(iters):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(clamp_between(xn + delta, low, high)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return clamp_between(xn + delta, low, high).detach()
