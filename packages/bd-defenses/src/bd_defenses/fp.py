"""FP, Fine-Pruning (Liu et al., RAID 2018): prune the last convolutional layer's channels
in increasing order of their mean activation on the defender's clean data while clean
accuracy stays within the tolerance, then fine-tune the pruned model.

Survey Sec. 3.1.1; BackdoorBench settings: acc_ratio 0.1, 1 % of channels per step,
fine-tuning 100 epochs, SGD lr 0.01, batch 256. Unlike that code, the stop rule is one-sided
(an accuracy rise never stops pruning), judged on enough images (see
MitigationData.selection_split), and the model kept is the last accepted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from bd_core.config import setting
from bd_core.data.pixels import Pixels
from bd_core.models import anatomy
from torch import Tensor

from bd_defenses.activations import layer_statistics
from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.finetune import finetune
from bd_defenses.pixels import accuracy
from bd_defenses.registry import register
from bd_defenses.surgery import mask_feature_channels


class PrunedAccuracy:
    """Clean accuracy with some pooled feature channels masked. Pruning only masks the pooled
    features, so the rest of the network runs once: each trial is the classifier alone."""

    def __init__(self, model: nn.Module, check: Pixels) -> None:
        parts = anatomy(model)
        pool, self.classifier = parts.pool[1], parts.classifier[1]
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            self.pooled = torch.cat(
                [pool(model.forward_features(check.normalize(x))).flatten(1) for _, x, _ in check.batches(512)]
            )
        model.train(was_training)
        self.labels = check.y

    def __call__(self, keep: Tensor) -> float:
        with torch.inference_mode():
            logits = self.classifier(self.pooled * keep.to(self.pooled))
        return int((logits.argmax(1) == self.labels).sum()) / max(1, len(self.labels))


@register("fp", family="pruning", paper="Liu et al., Fine-Pruning (RAID 2018)", aliases=("fine-pruning",))
@dataclass(frozen=True)
class FP(Defense):
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")  # all its training is finetune()
    tune: ClassVar[tuple[dict[str, Any], ...]] = (
        {"acc_ratio": 0.05},
        {"acc_ratio": 0.1},
        {"acc_ratio": 0.2},
    )  # --tune, mildest first: pruning tolerance
    acc_ratio: float = setting(0.1, 0, 1)  # tolerated relative drop of clean accuracy
    prune_step: float = setting(0.01, 1e-6, 1)  # fraction of the layer's channels pruned per step
    epochs: int = setting(100, 0, 100_000)  # fine-tuning after pruning
    batch_size: int = setting(256, 1, 1_000_000)
    lr: float = setting(0.01, above=0, high=1)
    channels: int = setting(-1, -1)  # >= 0: prune exactly this many channels instead of choosing by the rule

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        parts = anatomy(model)
        feature_name, feature_module = parts.pool
        _, check, rule = data.selection_split(ctx.seed)
        check_pixels = Pixels.of(check, ctx.device)
        # mean activation of each last-layer channel (the pooled feature is its spatial mean)
        order = layer_statistics(model, feature_module, data.clean, ctx.device).mean.argsort().cpu()
        channels = len(order)
        base = accuracy(model, check_pixels)
        pruned_accuracy = PrunedAccuracy(model, check_pixels)
        keep = torch.ones(channels)
        mask = mask_feature_channels(model, feature_name, keep)
        step = max(1, math.ceil(channels * self.prune_step))
        pruned, last_acc = 0, base
        for n in range(step, channels, step) if self.channels < 0 else []:
            trial = torch.ones(channels)
            trial[order[:n]] = 0
            acc = pruned_accuracy(trial)
            if acc < (1 - self.acc_ratio) * base:
                break
            pruned, last_acc = n, acc
        if self.channels >= 0:  # a count given by the user (e.g. another tool's choice, to compare algorithms)
            pruned, rule = min(self.channels, channels), f"{self.channels} channels given"
        final = torch.ones(channels)
        final[order[:pruned]] = 0
        mask.keep.copy_(final)
        if self.channels >= 0:
            last_acc = accuracy(model, check_pixels)
        losses = (
            finetune(
                model,
                data.clean,
                ctx,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                description="FP fine-tuning",
            )
            if self.epochs
            else []
        )
        ctx.report(
            layer=parts.last_conv[0] if parts.last_conv else f"{feature_name} input",
            channels=channels,
            pruned=pruned,
            selection=rule,
            check_acc_before=round(base, 4),
            check_acc_pruned=round(last_acc, 4),
            final_loss=round(losses[-1], 4) if losses else None,
        )
        return model
