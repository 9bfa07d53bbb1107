"""NC, Neural Cleanse (Wang et al., IEEE S&P 2019).

For every class t, reverse-engineer the smallest trigger (mask m, pattern p; x' = (1-m) x +
m p) that sends clean images to t: minimise CE(f(x'), t) + cost * ||m||_1 with Adam, the cost
adapted as in the paper (x2 after `patience` epochs at >= 98 % success, / 2^1.5 after
`patience` epochs below). A backdoor target needs a far smaller mask than the other classes:
the MAD anomaly index of the masks' L1 norms (> 2, below the median) flags it, and the model
is unlearned with the flagged triggers stamped on 20 % of the clean data (true labels kept).
If no class is flagged the model is returned unchanged. Classes are reverse-engineered in
chunks in one batched pass, so 43 or 200 classes stay tractable on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.pixels import Pixels, epoch_batches
from bd_core.progress import Steps
from bd_core.train import optimize
from torch import Tensor

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import register
from bd_defenses.unlearning import unlearn

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of a normal's std


def anomaly_indices(norms: Tensor) -> Tensor:
    # torch's median of an even count is the lower middle value, as in the survey's code (its
    # nc.py uses torch.median too); NC's authors' np.median averages the two middle values, which
    # gives a somewhat larger index for 10 classes
    median = norms.median()
    mad = MAD_CONSISTENCY * (norms - median).abs().median()
    return (norms - median).abs() / mad.clamp_min(1e-12)


@dataclass
class ReversedTriggers:
    masks: Tensor  # [K, 1, H, W] in [0, 1]
    patterns: Tensor  # [K, C, H, W] in [0, 1]
    success: Tensor  # [K] attack success of the kept trigger on D_m

    def stamp(self, x: Tensor, k: int | Tensor) -> Tensor:
        """`x` with class k's reversed trigger: one class for every image, or (k a tensor of
        class indices) one per image of the batch, in one elementwise pass."""
        k = k.to(self.masks.device) if isinstance(k, Tensor) else k
        mask, pattern = self.masks[k].to(x.device), self.patterns[k].to(x.device)
        return (1 - mask) * x + mask * pattern


@register(
    "nc",
    family="synthesis",
    paper="Wang et al., Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks (IEEE S&P 2019)",
    aliases=("neural-cleanse",),
)
@dataclass(frozen=True)
class NC(Defense):
    # --tune, mildest first: a lower threshold flags more classes
    tune: ClassVar[tuple[dict[str, Any], ...]] = (
        {"anomaly_threshold": 2.5},
        {"anomaly_threshold": 2.0},
        {"anomaly_threshold": 1.5},
    )
    init_cost: float = setting(1e-3, above=0, high=1e6)
    epochs: int = setting(80, 1, 100_000)  # reverse-engineering epochs per class
    mask_lr: float = setting(0.1, above=0, high=1)
    success_threshold: float = setting(0.98, 0, 1)
    patience: int = setting(5, 1, 100_000)
    cost_multiplier: float = setting(2.0, 1, 100)
    anomaly_threshold: float = setting(2.0, above=0)  # a huge value flags nothing
    unlearning_ratio: float = setting(0.2, 0, 1)
    unlearn_epochs: int = setting(100, 1, 100_000)
    unlearn_lr: float = setting(0.01, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)
    class_chunk: int = setting(10, 1, 100_000)  # classes reverse-engineered together in one batched pass

    # NC is reverse, then repair (Defense.__call__ runs the two stages); `--tune` varies the anomaly
    # threshold, so its candidates share one reverse-engineering of every class, and those
    # flagging the same classes share one unlearning
    second_stage_settings: ClassVar[frozenset[str]] = frozenset({"anomaly_threshold"})

    def first_stage(self, model: nn.Module, data: MitigationData, ctx: Context) -> tuple[nn.Module, ReversedTriggers]:
        return model, self.reverse(model, data, ctx)

    def second_stage(self, first: tuple[nn.Module, ReversedTriggers], data: MitigationData, ctx: Context) -> nn.Module:
        model, triggers = first
        return self.repair(model, triggers, data, ctx)

    def second_stage_key(self, first: tuple[nn.Module, ReversedTriggers]) -> tuple[int, ...]:
        return tuple(self.flagged(first[1]))

    def reverse(self, model: nn.Module, data: MitigationData, ctx: Context) -> ReversedTriggers:
        """The costly stage: every class's smallest trigger, the model's weights frozen."""
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        triggers = self.reverse_engineer(model, Pixels.of(data.clean, ctx.device), data.num_classes, ctx)
        for p in model.parameters():
            p.requires_grad_(True)
        return triggers

    def flagged(self, triggers: ReversedTriggers) -> list[int]:
        """Classes whose mask is anomalously small: MAD index above the threshold, below the median."""
        norms = triggers.masks.flatten(1).sum(1)
        index = anomaly_indices(norms)
        return [k for k in range(len(norms)) if index[k] > self.anomaly_threshold and norms[k] < norms.median()]

    def repair(self, model: nn.Module, triggers: ReversedTriggers, data: MitigationData, ctx: Context) -> nn.Module:
        """Unlearn the flagged classes' triggers (the model unchanged if none is flagged)."""
        norms = triggers.masks.flatten(1).sum(1)
        flagged = self.flagged(triggers)
        ctx.report(
            mask_l1=[round(float(v), 2) for v in norms],
            anomaly_index=[round(float(v), 3) for v in anomaly_indices(norms)],
            flagged=flagged,
            trigger_success=[round(float(v), 3) for v in triggers.success],
        )
        if not flagged:
            return model

        def stamp(x: Tensor, g: torch.Generator) -> Tensor:
            pick = torch.tensor(flagged)[torch.randint(len(flagged), (len(x),), generator=g)]
            return triggers.stamp(x, pick)

        unlearn(
            model,
            data.clean,
            ctx,
            stamp,
            ratio=self.unlearning_ratio,
            epochs=self.unlearn_epochs,
            lr=self.unlearn_lr,
            batch_size=self.batch_size,
            description="NC unlearning",
        )
        return model

    def reverse_engineer(self, model: nn.Module, pixels: Pixels, num_classes: int, ctx: Context) -> ReversedTriggers:
        _, c, h, w = pixels.x.shape
        g = ctx.generator(13)
        masks, patterns, success = [], [], []
        with Steps(f"NC reverse-engineering {num_classes} classes", num_classes * self.epochs) as advance:
            for first in range(0, num_classes, self.class_chunk):
                targets = torch.arange(first, min(first + self.class_chunk, num_classes), device=pixels.x.device)
                chunk = len(targets)
                m, p, s = self.reverse_chunk(model, pixels, targets, g, lambda n=chunk: advance(n))
                masks.append(m), patterns.append(p), success.append(s)
        return ReversedTriggers(torch.cat(masks), torch.cat(patterns), torch.cat(success))

    def reverse_chunk(self, model, pixels: Pixels, targets: Tensor, g: torch.Generator, tick):
        k = len(targets)
        _, c, h, w = pixels.x.shape
        dev = pixels.x.device
        mask_raw = (torch.rand(k, 1, h, w, generator=g) * 2 - 1).to(dev).requires_grad_(True)
        pattern_raw = (torch.rand(k, c, h, w, generator=g) * 2 - 1).to(dev).requires_grad_(True)
        opt = torch.optim.Adam([mask_raw, pattern_raw], lr=self.mask_lr, betas=(0.5, 0.9))
        cost = torch.full((k,), self.init_cost, device=dev)
        up = torch.zeros(k, dtype=torch.long, device=dev)
        down = torch.zeros(k, dtype=torch.long, device=dev)
        best_norm = torch.full((k,), float("inf"), device=dev)
        best_mask = torch.zeros(k, 1, h, w, device=dev)
        best_pattern = torch.zeros(k, c, h, w, device=dev)
        best_success = torch.zeros(k, device=dev)
        hits = torch.zeros(k, device=dev)

        def trigger_loss(x: Tensor, _y: Tensor) -> Tensor:
            nonlocal hits
            mask = torch.tanh(mask_raw) / 2 + 0.5
            pattern = torch.tanh(pattern_raw) / 2 + 0.5
            stamped = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # [K, B, C, H, W]
            logits = model(pixels.normalize(stamped.flatten(0, 1)))
            labels = targets.repeat_interleave(len(x))
            ce = F.cross_entropy(logits, labels, reduction="none").view(k, len(x)).mean(1)
            hits = hits + (logits.argmax(1) == labels).float().view(k, len(x)).sum(1).detach()
            return (ce + cost * mask.flatten(1).sum(1)).sum()

        @torch.no_grad()
        def keep_best_and_adapt_cost(_epoch: int) -> None:
            nonlocal hits, cost, up, down, best_norm, best_success
            asr, hits = hits / len(pixels), torch.zeros(k, device=dev)
            mask = torch.tanh(mask_raw) / 2 + 0.5
            l1 = mask.flatten(1).sum(1)
            better = (asr >= self.success_threshold) & (l1 < best_norm)
            best_norm = torch.where(better, l1, best_norm)
            best_mask[better], best_pattern[better] = mask[better], (torch.tanh(pattern_raw) / 2 + 0.5)[better]
            best_success = torch.where(better, asr, best_success)
            # the paper's cost schedule, per class
            first = (cost == 0) & (asr >= self.success_threshold)
            cost = torch.where(first, torch.full_like(cost, self.init_cost), cost)
            ok = asr >= self.success_threshold
            up, down = torch.where(ok, up + 1, torch.zeros_like(up)), torch.where(ok, torch.zeros_like(down), down + 1)
            raise_cost, lower_cost = up >= self.patience, down >= self.patience
            cost = torch.where(raise_cost & (cost > 0), cost * self.cost_multiplier, cost)
            cost = torch.where(lower_cost & (cost > 0), cost / self.cost_multiplier**1.5, cost)
            up, down = torch.where(raise_cost, 0, up), torch.where(lower_cost, 0, down)

        optimize(
            trigger_loss,
            epoch_batches(pixels, self.batch_size, g),
            opt,
            epochs=self.epochs,
            after_epoch=keep_best_and_adapt_cost,
            tick=tick,
        )
        with torch.no_grad():  # a class never reaching the threshold keeps its last trigger
            never = torch.isinf(best_norm)
            best_mask[never] = (torch.tanh(mask_raw) / 2 + 0.5)[never]
            best_pattern[never] = (torch.tanh(pattern_raw) / 2 + 0.5)[never]
        return best_mask.cpu(), best_pattern.cpu(), best_success.cpu()
