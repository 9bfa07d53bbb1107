"""i-BAU, implicit Backdoor Adversarial Unlearning (Zeng et al., ICLR 2022).

A minimax (survey Sec. 4.3): the inner problem finds a universal perturbation delta that
maximises the loss (with an L2 penalty 0.001 ||delta||^2); the outer problem updates the
model to classify perturbed data correctly, with the gradient through the inner solution
computed implicitly: K fixed-point iterations of the inner gradient-descent map give the
hypergradient. Defaults as BackdoorBench: 5 rounds, K 5, Adam lr 1e-4, inner step 0.1,
delta ascent step 10, and 1 % of each batch perturbed in the outer loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels, epoch_batches
from bd_core.train import optimize
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import register


class _HardSigmoid(nn.Module):
    """hardsigmoid written with clamp: the same function, but twice differentiable in autograd."""

    def forward(self, x: Tensor) -> Tensor:
        return (x / 6 + 0.5).clamp(0, 1)


class _HardSwish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * (x / 6 + 0.5).clamp(0, 1)


def twice_differentiable(model: nn.Module) -> nn.Module:
    """Swap activations whose backward has no derivative (MobileNetV3's hardsigmoid/hardswish)
    for identical clamp-based ones, so the hypergradient can differentiate through a gradient."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Hardsigmoid):
                setattr(module, name, _HardSigmoid())
            elif isinstance(child, nn.Hardswish):
                setattr(module, name, _HardSwish())
    return model


def hypergradient(delta: Tensor, params: list[Tensor], K: int, inner_map, outer_loss) -> tuple[list[Tensor], Tensor]:
    """(d outer / d params through delta* = inner_map(delta*, params) (fixed-point method), the
    outer loss at delta, detached)."""
    delta = delta.detach().requires_grad_(True)
    o_loss = outer_loss(delta)
    g_delta, *g_params = torch.autograd.grad(o_loss, [delta, *params], allow_unused=True)
    mapped = inner_map(delta)
    v = torch.zeros_like(delta)
    for _ in range(K):
        (jv,) = torch.autograd.grad(mapped, delta, grad_outputs=v, retain_graph=True)
        v = jv + g_delta
    indirect = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    grads = [
        (gi if gi is not None else 0) + (gd if gd is not None else 0) for gi, gd in zip(indirect, g_params, strict=True)
    ]
    return grads, o_loss.detach()


@register(
    "i-bau",
    family="adversarial",
    paper="Zeng et al., Adversarial Unlearning of Backdoors via Implicit Hypergradient (ICLR 2022)",
    aliases=("ibau",),
)
@dataclass(frozen=True)
class IBAU(Defense):
    # --tune, mildest first: the ascent step sets the perturbation's size (the L2 penalty cannot:
    # delta starts at zero, where the penalty's gradient vanishes; measured inert, docs/beyond.md)
    tune: ClassVar[tuple[dict[str, Any], ...]] = ({"delta_lr": 5.0}, {"delta_lr": 10.0}, {"delta_lr": 20.0})
    rounds: int = setting(5, 1, 100_000)
    K: int = setting(5, 1, 100_000)
    lr: float = setting(1e-4, above=0, high=1)
    inner_step: float = setting(0.1, above=0, high=1000)
    delta_lr: float = setting(10.0, above=0, high=10_000)
    penalty: float = setting(0.001, 0, 1e6)
    portion: float = setting(0.01, 0, 1)  # of each batch perturbed in the outer loss (at least one image)
    batch_size: int = setting(256, 1, 1_000_000)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        twice_differentiable(model).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.lr)
        g = ctx.generator(11)
        gains: list[float] = []
        delta = torch.zeros_like(pixels.x[:1])

        def batches_against_new_perturbation():
            # each round first solves the inner maximisation for a universal perturbation
            nonlocal delta
            delta = self.universal_perturbation(model, pixels, g)
            gains.append(self.loss_gain(model, pixels, delta))
            return epoch_batches(pixels, self.batch_size, g)()

        def implicit_hypergradient_step(x: Tensor, y: Tensor) -> Tensor:
            xn = pixels.normalize(x)
            hit = torch.zeros(len(y), dtype=torch.bool, device=xn.device)
            hit[torch.randperm(len(y), generator=g)[: max(1, int(len(y) * self.portion))].to(xn.device)] = True

            def inner_map(d: Tensor) -> Tensor:
                inner_loss = -F.cross_entropy(model(xn + d), y) + self.penalty * d.pow(2).sum()
                (grad,) = torch.autograd.grad(inner_loss, d, create_graph=True)
                return d - self.inner_step * grad

            def outer_loss(d: Tensor) -> Tensor:
                return F.cross_entropy(model(torch.where(hit.view(-1, 1, 1, 1), xn + d, xn)), y)

            grads, loss = hypergradient(delta, params, self.K, inner_map, outer_loss)
            for p, gr in zip(params, grads, strict=True):
                # double backward gives conv weights' gradients in another layout; in the parameter's
                # own, later backward passes accumulate into them without autograd's layout warning
                p.grad = torch.empty_like(p).copy_(gr) if isinstance(gr, Tensor) else torch.zeros_like(p)
            return loss  # computed by the hypergradient already: no second forward

        # attention's fused kernels have no double backward; the math backend computes the same
        # softmax(QK^T/sqrt(d))V with ordinary ops (only the ViT has attention)
        with sdpa_kernel(SDPBackend.MATH):
            optimize(
                implicit_hypergradient_step,
                batches_against_new_perturbation,
                opt,
                epochs=self.rounds,
                description="i-BAU unlearning",
            )
        ctx.report(rounds=self.rounds, inner_loss_gain_per_round=[round(v, 4) for v in gains])
        return model

    def universal_perturbation(self, model: nn.Module, pixels: Pixels, g: torch.Generator) -> Tensor:
        """One ascent step per batch (lr delta_lr) on a shared delta, against the model's own labels."""
        delta = torch.zeros_like(pixels.x[:1], requires_grad=True)

        def ascent(x: Tensor, _y: Tensor) -> Tensor:
            xn = pixels.normalize(x)
            with torch.no_grad():
                own = model(xn).argmax(1)
            return -F.cross_entropy(model(xn + delta), own) + self.penalty * delta.pow(2).sum()

        optimize(
            ascent,
            epoch_batches(pixels, self.batch_size, g),
            torch.optim.SGD([delta], lr=self.delta_lr),
            epochs=1,
            tick=lambda: None,
        )
        return delta.detach()

    @torch.no_grad()
    def loss_gain(self, model: nn.Module, pixels: Pixels, delta: Tensor) -> float:
        """How much the inner maximisation raised the clean loss on D_m (reported; tested)."""
        xn = pixels.normalize(pixels.x)
        return float(F.cross_entropy(model(xn + delta), pixels.y) - F.cross_entropy(model(xn), pixels.y))
