"""ANP, Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021).

Neurons (conv output channels, BN folded in) are scaled by a mask m and adversarially
perturbed by xi in [-eps, eps] on weights and biases (survey Eq. 5). The mask solves the
minimax of Eq. 6: min_m  alpha * L(m) + (1 - alpha) * max_xi L(m + xi), one signed gradient
step per iteration from a random start, 2000 iterations. Neurons whose mask falls below a
threshold are pruned; the threshold is raised in steps of 0.05 up to 0.9 while clean
accuracy on the defender's data stays within acc_ratio (BackdoorBench picked it with test
ASR, which a defender does not have).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels
from bd_core.train import optimize

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.masking import MaskedConv2d, bake_masks, clip_masks, mask_scores, masked_model, prune_by_threshold
from bd_defenses.pixels import accuracy
from bd_defenses.registry import register


@dataclass
class LearnedMasks:
    """ANP after its mask optimisation, before pruning: what candidates of the tolerance share."""

    model: nn.Module  # its convolutions wrapped, carrying the learned masks
    wrapped: dict[str, MaskedConv2d]
    check: Pixels  # the images the pruning threshold is checked on
    base_acc: float  # the model's accuracy on them before any masking
    rule: str  # how the check images were chosen (MitigationData.selection_split)


@register(
    "anp",
    family="masking",
    paper="Wu & Wang, Adversarial Neuron Pruning Purifies Backdoored Deep Models (NeurIPS 2021)",
)
@dataclass(frozen=True)
class ANP(Defense):
    requires: ClassVar[dict[str, str]] = {"conv": "it perturbs and masks every convolution's output channels"}
    tune: ClassVar[tuple[dict[str, Any], ...]] = (
        {"acc_ratio": 0.05},
        {"acc_ratio": 0.1},
        {"acc_ratio": 0.2},
    )  # --tune, mildest first: pruning tolerance
    eps: float = setting(0.4, 0, 1)  # perturbation budget on each neuron's weight and bias multipliers
    alpha: float = setting(0.2, 0, 1)  # weight of the natural loss (lambda in survey Eq. 6)
    iterations: int = setting(2000, 1, 100_000)
    # images per iteration, as the survey's code (it samples with replacement)
    batch_size: int = setting(256, 1, 1_000_000)
    mask_lr: float = setting(0.01, above=0, high=1)  # the survey's code (BackdoorBench's config); ANP's paper used 0.2
    acc_ratio: float = setting(0.1, 0, 1)
    pruning_max: float = setting(0.9, 0, 1)
    pruning_step: float = setting(0.05, above=0, high=1)

    # ANP is learn, then prune (Defense.__call__ runs the two stages); `--tune` varies the pruning
    # tolerance, so its candidates share the masks' 2000 iterations
    second_stage_settings: ClassVar[frozenset[str]] = frozenset({"acc_ratio"})

    def first_stage(self, model: nn.Module, data: MitigationData, ctx: Context) -> LearnedMasks:
        return self.learn(model, data, ctx)

    def second_stage(self, learned: LearnedMasks, data: MitigationData, ctx: Context) -> nn.Module:
        return self.prune(learned, ctx)

    def learn(self, model: nn.Module, data: MitigationData, ctx: Context) -> LearnedMasks:
        """The costly stage: the masks of survey Eq. 6, learned on D_m (its fit part when held out)."""
        fit, check, rule = data.selection_split(ctx.seed)
        check_pixels = Pixels.of(check, ctx.device)
        base = accuracy(model, check_pixels)
        wrapped = masked_model(model)
        self.learn_masks(model, wrapped, Pixels.of(fit, ctx.device), ctx)
        return LearnedMasks(model, wrapped, check_pixels, base, rule)

    def prune(self, learned: LearnedMasks, ctx: Context) -> nn.Module:
        """Prune by the learned masks as far as the check accuracy stays within acc_ratio."""
        model, wrapped, check_pixels, base = learned.model, learned.wrapped, learned.check, learned.base_acc
        scores = mask_scores(wrapped)
        n_steps = int(round(self.pruning_max / self.pruning_step))
        thresholds = [round(i * self.pruning_step, 6) for i in range(n_steps + 1)]
        threshold, pruned = prune_by_threshold(
            wrapped, scores, thresholds, lambda: accuracy(model, check_pixels) >= (1 - self.acc_ratio) * base
        )
        all_scores = torch.cat([s.flatten().cpu() for s in scores.values()])
        ctx.report(
            threshold=threshold,
            pruned=pruned,
            neurons=int(all_scores.numel()),
            selection=learned.rule,
            mask_mean=round(float(all_scores.mean()), 4),
            mask_below_0_2=int((all_scores < 0.2).sum()),
            check_acc_before=round(base, 4),
            check_acc_after=round(accuracy(model, check_pixels), 4),
        )
        return bake_masks(model)

    def learn_masks(self, model: nn.Module, wrapped, pixels: Pixels, ctx: Context) -> None:
        masks = [m.mask for m in wrapped.values()]
        noises = [t for m in wrapped.values() for t in (m.perturb, m.bias_perturb)]
        for t in noises:
            t.requires_grad_(self.eps > 0)
        mask_opt = torch.optim.SGD(masks, lr=self.mask_lr, momentum=0.9)
        batches = cycle(list(pixels.batches(self.batch_size, ctx.generator(1))))  # small D_m: reshuffling adds nothing

        def next_batch():  # one iteration of ANP is one "epoch" of the loop: a single batch
            _, x, y = next(batches)
            return [(x, y)]

        def perturbed_and_natural_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x = pixels.normalize(x)
            if self.eps > 0:
                perturb_neurons(model, noises, x, y, self.eps)  # autograd.grad: the masks' gradients stay untouched
                ((1 - self.alpha) * F.cross_entropy(model(x), y)).backward()  # the loss under perturbation
                with torch.no_grad():
                    for t in noises:
                        t.zero_()
            return self.alpha * F.cross_entropy(model(x), y)

        optimize(
            perturbed_and_natural_loss,
            next_batch,
            mask_opt,
            epochs=self.iterations,
            after_step=lambda: clip_masks(wrapped),
            description="ANP mask optimisation",
        )
        for t in noises:
            t.requires_grad_(False)
            t.data.zero_()


def perturb_neurons(model: nn.Module, noises: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    """The inner maximisation of survey Eq. 6 as ANP's code does it: a random start in
    [-eps, eps], then one ascent step of size eps along the *sign* of the loss gradient (an
    FGSM step on the neurons). The gradient itself is tiny, so without the sign the
    perturbation never leaves its random start. Like the authors' code (and the survey's
    fork) the result is not projected back: it lies in [-2 eps, 2 eps]."""
    with torch.no_grad():
        for t in noises:
            t.uniform_(-eps, eps)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), noises, allow_unused=True)
    with torch.no_grad():
        for t, g in zip(noises, grads, strict=True):
            if g is not None:
                t.add_(eps * g.sign())
