"""FMP, Feature Map Pruning (Huang & Bu, 2023).

For every channel of every convolution, a one-step perturbation of a few clean images
(eps = 1/255 from a random-sign start) maximises the change of that channel's feature map
(survey Eq. 4). Channels whose perturbation hurts the model's accuracy most are the ones the
input can steer; in each layer the 1/64 of channels with the lowest accuracy under their
own perturbation are re-initialised (zeroed with their BN), then the whole model is
fine-tuned for 10 epochs (SGD lr 0.01, momentum 0.9, cosine), as the authors' code does.
Channels are processed in groups: one forward/backward per group, stopped at the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels
from bd_core.models import anatomy
from bd_core.progress import Steps
from torch import Tensor

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.finetune import finetune
from bd_defenses.registry import register
from bd_defenses.surgery import zero_channels


class _ConvDone(Exception):
    """Raised from a hook once the conv of interest has run."""


def conv_output(model: nn.Module, conv: nn.Module, x: Tensor) -> Tensor:
    """`conv`'s output for `x`. The forward pass stops right after it (an exception from a hook is
    the one way to cut an arbitrary module's forward): FMP asks for each conv's maps once per
    group of channels, and the layers after the conv would be computed for nothing."""
    seen: list[Tensor] = []

    def hook(module, args, output) -> None:
        seen.append(output)
        raise _ConvDone

    handle = conv.register_forward_hook(hook)
    try:
        model(x)
    except _ConvDone:
        pass
    finally:
        handle.remove()
    return seen[0]


@register("fmp", family="pruning", paper="Huang & Bu, Feature Map Testing for Backdoor Defense / FMP (2023)")
@dataclass(frozen=True)
class FMP(Defense):
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")  # all its training is finetune()
    requires: ClassVar[dict[str, str]] = {"conv": "it ranks every convolution's feature maps by their FGSM sensitivity"}
    eps: float = setting(1 / 255, 0, 1)
    adv_images: int = setting(32, 1, 10_000_000)
    prune_fraction: float = setting(1 / 64, 0, 1)  # per layer, of the most perturbation-sensitive channels
    epochs: int = setting(10, 0, 100_000)
    lr: float = setting(0.01, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)
    group: int = setting(16, 1, 100_000)  # channels perturbed together in one batched pass

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        parts = anatomy(model)
        bn_of = {name: bn for name, _, _, bn in parts.conv_bn}
        pixels = Pixels.of(data.clean, ctx.device)
        g = ctx.generator(8)
        pick = torch.randperm(len(pixels), generator=g)[: self.adv_images].to(pixels.x.device)
        x, y = pixels.x[pick], pixels.y[pick]
        start = (x + self.eps * torch.empty_like(x).uniform_(-self.eps, self.eps).sign()).clamp(0, 1)
        model.eval()
        pruned: dict[str, int] = {}
        total = sum(conv.out_channels for _, conv in parts.convs)
        with Steps("FMP feature-map ranking", total) as advance:
            for name, conv in parts.convs:
                acc = self.channel_sensitivity(model, conv, pixels, x, y, start, advance)
                k = int(len(acc) * self.prune_fraction)
                if k:
                    zero_channels(conv, acc.argsort()[:k], bn_of.get(name))
                    pruned[name] = k
        losses = (
            finetune(
                model,
                data.clean,
                ctx,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                weight_decay=0.0,
                description="FMP fine-tuning",
            )
            if self.epochs
            else []
        )
        ctx.report(
            pruned_per_layer=pruned,
            pruned=sum(pruned.values()),
            channels=total,
            final_loss=round(losses[-1], 4) if losses else None,
        )
        return model

    def channel_sensitivity(self, model, conv, pixels: Pixels, x, y, start, advance) -> Tensor:
        """Accuracy on x under each channel's own feature-map-maximising perturbation."""
        n, channels = len(x), conv.out_channels
        with torch.no_grad():
            clean = conv_output(model, conv, pixels.normalize(x))
        accuracies = []
        for first in range(0, channels, self.group):
            chans = torch.arange(first, min(first + self.group, channels), device=x.device)
            adv = start.repeat(len(chans), 1, 1, 1).requires_grad_(True)
            out = conv_output(model, conv, pixels.normalize(adv))
            rows = torch.arange(len(chans) * n, device=x.device)
            own = out[rows, chans.repeat_interleave(n)]  # each replica's own channel map
            loss = F.mse_loss(own, clean[:, chans].transpose(0, 1).reshape_as(own), reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                stepped = (adv + self.eps * grad.sign()).clamp(0, 1)
                correct = model(pixels.normalize(stepped)).argmax(1) == y.repeat(len(chans))
                accuracies.append(correct.view(len(chans), n).float().mean(1))
            advance(len(chans))
        return torch.cat(accuracies).cpu()
