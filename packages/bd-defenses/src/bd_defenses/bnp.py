"""BNP, BatchNorm Pruning (Zheng et al., "Pre-activation Distributions Expose Backdoor Neurons",
NeurIPS 2022).

A backdoored model's BatchNorm layers track statistics of the poisoned training data. For every
BN, the distribution of its input on the defender's clean data, N(mu_c, var_c), is compared
with the tracked one, N(mu_r, var_r), per channel, by the authors' divergence

    K = log(var_r / var_c) + (var_c + (mu_c - mu_r)^2) / (2 var_r) - 1/2

(the authors' code and the survey's fork; a KL(clean || running) with the log term counted
twice), and channels with K above the layer's mean + u * std are pruned: the BN's weight and
bias are zeroed, so the channel outputs 0 (survey Sec. 3.1.2, Eq. 2; u = 3).
As in that code: every BatchNorm2d is considered, the clean data pass through the training
augmentation (the tracked statistics were gathered on augmented batches), and the variance is
the unbiased one. Unlike it, the statistics cover the whole mitigation set, not only the last
batch of the loader (the same at SPC 2 and 10; at SPC 100 the last batch holds 232 of 1 000),
and both variances get the BN's eps (see below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from bd_core.config import setting
from torch import Tensor

from bd_defenses.activations import layers_statistics
from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.pruning import layer_outliers, outlier_report
from bd_defenses.registry import register
from bd_defenses.surgery import zero_bn_channels


def bnp_divergence(mu_r: Tensor, var_r: Tensor, mu_c: Tensor, var_c: Tensor) -> Tensor:
    """The authors' per-channel divergence of the clean (c) from the tracked (r) statistics."""
    return torch.log(var_r / var_c) + (var_c + (mu_c - mu_r) ** 2) / (2 * var_r) - 0.5


@register(
    "bnp", family="pruning", paper="Zheng et al., Pre-activation Distributions Expose Backdoor Neurons (NeurIPS 2022)"
)
@dataclass(frozen=True)
class BNP(Defense):
    requires: ClassVar[dict[str, str]] = {
        "batchnorm": "it compares each BatchNorm's running statistics with the clean data's"
    }
    tune: ClassVar[tuple[dict[str, Any], ...]] = (
        {"u": 4.0},
        {"u": 3.0},
        {"u": 2.0},
    )  # --tune, mildest first: lower u prunes more
    u: float = setting(3.0, -10, 100)  # lambda in tau_l = mean(K_l) + lambda * std(K_l)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        bns = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        clean = layers_statistics(
            model,
            [bn for _, bn in bns],
            data.clean,
            ctx.device,
            inputs=True,
            augment=data.augment(),
            generator=ctx.generator(15),
        )
        pruned = {}
        for (name, bn), stats in zip(bns, clean, strict=True):
            dev = bn.running_mean.device
            var_c = stats.unbiased_var.to(dev)
            # + eps, as the BN's own normalisation: a channel silent on clean data (variance 0) then
            # scores high, where the authors' code gets inf and a NaN threshold that prunes nothing
            divergence = bnp_divergence(
                bn.running_mean.double(), bn.running_var.double() + bn.eps, stats.mean.to(dev), var_c + bn.eps
            )
            outliers = layer_outliers(divergence, self.u)
            zero_bn_channels(bn, outliers.nonzero().squeeze(1))
            pruned[name] = outliers.cpu()
        ctx.report(**outlier_report(pruned))
        return model
