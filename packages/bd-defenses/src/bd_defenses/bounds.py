"""Channel-wise activation upper bounds shared by MM-BD and UNIT (survey Sec. 3.3.1).

A `ChannelBound` wraps an activation (or, where the model applies ReLU functionally right
after a BN, that BN with the ReLU applied first) and clamps each channel at a learnable
bound B_c. Bounds are learned with Adam on the defender's clean data; the weight of the
bound penalty adapts every few epochs to keep clean accuracy within a tolerance, as the
MM-BD code does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.data.pixels import Pixels
from bd_core.models import activation_points, as_feature_map
from bd_core.train import optimize
from torch import Tensor

from bd_defenses.base import Context
from bd_defenses.pixels import accuracy
from bd_defenses.surgery import set_module


class _ClampAbove(torch.autograd.Function):
    """min(y, bound) with the backward written as two passes over the map. torch.minimum's own
    backward takes six (eq, where, lt, gt, masked_fill, div: it splits a tie's gradient in
    half), and on MM-BD's parity run those were 22 % of the defense's time (bench/profiles).
    Here an exact tie goes to the bound (measure-zero for real activations)."""

    @staticmethod
    def forward(ctx, y: Tensor, bound: Tensor) -> Tensor:
        below = y < bound
        ctx.save_for_backward(below)
        ctx.bound_shape = bound.shape
        return torch.where(below, y, bound)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        (below,) = ctx.saved_tensors
        grad_y = grad * below
        grad_bound = (grad - grad_y).sum_to_size(ctx.bound_shape) if ctx.needs_input_grad[1] else None
        return grad_y, grad_bound


def clamp_above(y: Tensor, bound: Tensor) -> Tensor:
    """y capped at `bound` (broadcast), gradients to both (see _ClampAbove)."""
    return _ClampAbove.apply(y, bound)


class ChannelBound(nn.Module):
    def __init__(self, inner: nn.Module, channels: int, relu_first: bool, tokens: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.relu_first = relu_first
        self.tokens = tokens  # [N, L, D] transformer tokens: channels on the last dim
        self.bound = nn.Parameter(torch.full((channels,), float("inf")))

    def forward(self, x: Tensor) -> Tensor:
        y = self.inner(x)
        if self.relu_first:
            y = F.relu(y)
        return clamp_above(y, self.bound if self.tokens else self.bound.view(1, -1, *([1] * (y.dim() - 2))))


def install_bounds(model: nn.Module, example: Tensor) -> list[ChannelBound]:
    """Wrap every activation point of `model` in a ChannelBound (bound +inf: no change yet)."""
    points = activation_points(model)
    if not points:
        raise ValueError(f"{type(model).__name__} has no activation layers to bound")
    channels: dict[str, tuple[int, bool]] = {}

    def recorder(name: str):
        def hook(module, args, output) -> None:
            channels[name] = as_feature_map(output).shape[1], output.dim() == 3

        return hook

    hooks = [m.register_forward_hook(recorder(n)) for n, m, _ in points]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    bounds = []
    for name, module, relu_first in points:
        count, tokens = channels[name]
        bound = ChannelBound(module, count, relu_first, tokens=tokens).to(example.device)
        set_module(model, name, bound)
        bounds.append(bound)
    for p in model.parameters():
        p.requires_grad_(False)
    for b in bounds:
        b.bound.requires_grad_(True)
    return bounds


def layer_moments(stats) -> tuple[float, float, float]:
    """(max, mean, std) of all activations of one layer, merged from its per-channel statistics."""
    n = stats.count.to(torch.float64).expand_as(stats.mean)
    mean = (n * stats.mean).sum() / n.sum()
    m2 = stats.m2.sum() + (n * (stats.mean - mean) ** 2).sum()
    return float(stats.max.max()), float(mean), float((m2 / n.sum()).sqrt())


def train_bounds(
    model: nn.Module,
    bounds: list[ChannelBound],
    pixels: Pixels,
    ctx: Context,
    *,
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    penalty_fn: Callable[[Tensor], Tensor],
    lam: float,
    epochs: int,
    lr: float,
    batch_size: int,
    alpha: float,
    acc_reduction: float,
    adapt_every: int,
    description: str,
) -> dict[str, float]:
    """Adam on the bounds of loss_fn(logits, index, labels) + lam * sum penalty_fn(B_l); every
    `adapt_every` epochs lam grows by `alpha` while the epoch's clean accuracy is within
    `acc_reduction` of the start, and shrinks by it otherwise."""
    opt = torch.optim.Adam([b.bound for b in bounds], lr=lr)
    initial = accuracy(model, pixels)
    g = ctx.generator(6)
    state = {"lam": lam, "acc": initial, "correct": 0, "idx": None}

    def batches():
        for idx, x, y in pixels.batches(batch_size, g):
            state["idx"] = idx  # loss_fn may look up per-image targets by row
            yield x, y

    def loss(x: Tensor, y: Tensor) -> Tensor:
        logits = model(pixels.normalize(x))
        state["correct"] += int((logits.argmax(1) == y).sum())
        penalty = sum(penalty_fn(b.bound) for b in bounds)
        return loss_fn(logits, state["idx"], y) + state["lam"] * penalty

    def adapt_lambda(epoch: int) -> None:
        """Every `adapt_every` epochs: a stronger bound penalty while clean accuracy holds, else weaker."""
        state["acc"], state["correct"] = state["correct"] / len(pixels), 0
        if epoch - 1 and (epoch - 1) % adapt_every == 0:
            state["lam"] = state["lam"] * alpha if state["acc"] > initial - acc_reduction else state["lam"] / alpha

    optimize(loss, batches, opt, epochs=epochs, after_epoch=adapt_lambda, description=description)
    lam, acc = state["lam"], state["acc"]
    with torch.no_grad():
        norm = float(torch.cat([b.bound.detach().flatten() for b in bounds]).norm())
    return {
        "bound_points": len(bounds),
        "final_lambda": lam,
        "initial_acc": round(initial, 4),
        "final_epoch_acc": round(acc, 4),
        "bound_norm": round(norm, 4),
    }
