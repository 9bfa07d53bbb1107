"""NPD, Neural Polarizer Defense (Zhu et al., NeurIPS 2024).

A polarizer, a 1x1 convolution initialised to the identity followed by an affine BN, is
inserted before a per-architecture layer near the end of the feature extractor (the survey
fork's choice: PreAct-ResNet18 layer4.1.conv1, VGG19-BN features.49, EfficientNet-B3
features.8.0, MobileNetV3 features.16.0). Only the polarizer is trained; the model is fixed.
Each batch: a sample-specific targeted perturbation (L2 <= trigger_norm, signed steps toward
the estimated target, the largest non-true logit; survey Eq. 18) approximates the trigger;
then the polarizer minimises (survey Eq. 19-21, the fork's code)

    lambda1 CE(x, y) + lambda2 CE(x_adv, f(x)) + lambda3 BCE(x_adv, top wrong class)
    + lambda4 (-log(1 - p_target(x_adv))).

The 5 warm-up epochs (lr 1e-4, clean loss only) run the polarizer in train mode, as the
authors' code. Defaults: lambda1 1, lambda2 = lambda3 = lambda4 0.4 (the survey uses 0.5 on GTSRB),
50 epochs after 5 warm-up epochs, SGD lr 0.01 held constant (the fork's code builds no
scheduler for the polarizer), batch 128, L2 trigger norm 3.0 and signed steps of 0.1 in pixel
units ([0, 1] images, clamped to the image range before normalising, as the fork's
get_perturbed_image), 2 inner steps, early stop at 60 % targeted success. The mitigation images
are augmented (random crop of the zero-padded image, flip where the dataset allows), redrawn
every epoch, as the fork's loader passes them through its training transform before perturbing
them (`augment=false`: the images as they are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels, epoch_batches
from bd_core.models import anatomy
from bd_core.train import optimize
from torch import Tensor

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import register
from bd_defenses.surgery import set_module


def make_polarizer(channels: int) -> nn.Sequential:
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    return nn.Sequential(conv, nn.BatchNorm2d(channels))


def insert_polarizer(model: nn.Module, device: str) -> tuple[str, nn.Sequential]:
    name, target = anatomy(model).polarizer_before
    if not isinstance(target, nn.Conv2d):
        raise TypeError(f"NPD's target layer {name} is {type(target).__name__}, expected Conv2d")
    polarizer = make_polarizer(target.in_channels).to(device).eval()  # an affine layer, as deployed
    set_module(model, name, nn.Sequential(polarizer, target))
    return name, polarizer


def project_l2(delta: Tensor, radius: float) -> Tensor:
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (delta.dim() - 1)))
    return delta * (radius / norms).clamp(max=1.0)


@register(
    "npd",
    family="additive",
    paper="Zhu et al., Neural Polarizer: A Lightweight and Effective Backdoor Defense "
    "via Purifying Poisoned Features (NeurIPS 2023/2024)",
)
@dataclass(frozen=True)
class NPD(Defense):
    requires: ClassVar[dict[str, str]] = {"conv": "its polarizer is a convolution inserted before one of the model's"}
    lambda1: float = setting(1.0, 0, 100)
    lambda2: float = setting(0.4, 0, 100)
    lambda3: float = setting(0.4, 0, 100)
    lambda4: float = setting(0.4, 0, 100)
    epochs: int = setting(50, 1, 100_000)
    warm_epochs: int = setting(5, 0, 100_000)
    warm_lr: float = setting(1e-4, above=0, high=1)
    lr: float = setting(0.01, above=0, high=1)
    batch_size: int = setting(128, 1, 1_000_000)
    trigger_norm: float = setting(3.0, above=0, high=1000)
    adv_lr: float = setting(0.1, above=0, high=1000)
    inner_steps: int = setting(2, 1, 100_000)
    stop_success: float = setting(0.6, 0, 1)
    augment: bool = True

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        layer, polarizer = insert_polarizer(model, ctx.device)
        for p in polarizer.parameters():
            p.requires_grad_(True)
        g = ctx.generator(7)
        augment = data.augment() if self.augment else None
        clean_loss = lambda x, y: F.cross_entropy(model(pixels.normalize(x)), y)  # noqa: E731
        warm = torch.optim.SGD(polarizer.parameters(), lr=self.warm_lr)
        # the authors' warm-up runs the polarizer in train mode: its BN normalizes by batch
        # statistics and its running estimates move toward the layer's input statistics; the
        # polarizer is an affine layer (eval mode) from then on
        polarizer.train()
        optimize(
            clean_loss,
            epoch_batches(pixels, self.batch_size, g, augment),
            warm,
            epochs=self.warm_epochs,
            description="NPD polarizer warm-up",
        )
        polarizer.eval()
        opt = torch.optim.SGD(polarizer.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        counts = {"hits": 0, "seen": 0, "hit_rate": 0.0}

        def polarizer_loss(x: Tensor, y: Tensor) -> Tensor:
            xn = pixels.normalize(x)
            with torch.no_grad():
                logits = model(xn)
            own = logits.argmax(1)
            target = logits.scatter(1, y[:, None], float("-inf")).argmax(1)  # largest non-true logit
            adv = self.targeted_perturbation(model, pixels, x, target)
            with torch.no_grad():
                counts["hits"] += int((model(adv).argmax(1) == target).sum())
                counts["seen"] += len(y)
            clean_logits, adv_logits = model(xn), model(adv)
            probs = adv_logits.softmax(1)
            top2 = probs.topk(2, dim=1).indices
            wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
            not_class = lambda cls: -torch.log(1.0001 - probs.gather(1, cls[:, None]) + 1e-12).mean()  # noqa: E731
            return (
                self.lambda1 * F.cross_entropy(clean_logits, y)
                + self.lambda2 * F.cross_entropy(adv_logits, own)
                + self.lambda3 * not_class(wrong)
                + self.lambda4 * not_class(target)
            )

        def targeted_success(_epoch: int) -> None:
            counts.update(hit_rate=counts["hits"] / max(1, counts["seen"]), hits=0, seen=0)

        optimize(
            polarizer_loss,
            epoch_batches(pixels, self.batch_size, g, augment),
            opt,
            epochs=self.epochs,
            after_epoch=targeted_success,
            description="NPD polarizer",
        )
        hit_rate = counts["hit_rate"]
        conv = polarizer[0].weight.detach().flatten(1)
        ctx.report(
            layer=layer,
            polarizer_norm=round(float(conv.norm()), 4),
            polarizer_identity_distance=round(float((conv - torch.eye(conv.shape[0], device=conv.device)).norm()), 4),
            final_targeted_success=round(hit_rate, 4),
        )
        return model

    def targeted_perturbation(self, model: nn.Module, pixels: Pixels, x: Tensor, target: Tensor) -> Tensor:
        """A per-image perturbation of the [0, 1] images toward `target`; returns the normalised
        perturbed images."""

        def perturbed(delta: Tensor) -> Tensor:
            return pixels.normalize((x + delta).clamp(0, 1))

        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(self.inner_steps):
            loss = F.cross_entropy(model(perturbed(delta)), target)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= self.adv_lr * grad.sign()
                delta.copy_(project_l2(delta, self.trigger_norm))
                hit = (model(perturbed(delta)).argmax(1) == target).float().mean()
            if hit > self.stop_success:
                break
        return perturbed(delta.detach())
