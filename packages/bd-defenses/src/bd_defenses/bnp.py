"""BNP (Zheng et al., ECCV 2022, "Data-free backdoor removal based on channel Lipschitzness"'s
sibling: "Pre-activation distributions expose backdoor neurons", NeurIPS 2022).

For each BN that normalizes a conv, compare the Gaussian N(mu_bn, sigma_bn) of its tracked
running statistics (biased by the poisoned training data) with N(mu_m, sigma_m) of the
pre-activations the defender's clean data produce; prune channels whose KL divergence
exceeds the layer's mean + lambda * std (survey Sec. 3.1.2, Eq. 2; lambda = 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from bd_core.models import anatomy
from torch import Tensor

from bd_defenses.activations import layers_statistics
from bd_defenses.base import Context, Defense, MitigationData, check_between
from bd_defenses.pruning import layer_outliers, outlier_report
from bd_defenses.registry import register
from bd_defenses.surgery import zero_channels


def gaussian_kl(mu_p: Tensor, var_p: Tensor, mu_q: Tensor, var_q: Tensor) -> Tensor:
    """KL(N(mu_p, var_p) || N(mu_q, var_q)), elementwise."""
    return 0.5 * (torch.log(var_q / var_p) + (var_p + (mu_p - mu_q) ** 2) / var_q - 1)


@register("bnp", family="pruning", paper="Zheng et al., Pre-activation Distributions Expose Backdoor Neurons (NeurIPS 2022)")
@dataclass(frozen=True)
class BNP(Defense):
    u: float = 3.0  # lambda in tau_l = mean(K_l) + lambda * std(K_l)

    def __post_init__(self) -> None:
        check_between("u", self.u, -10.0, 100.0)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pairs = anatomy(model).conv_bn
        clean = layers_statistics(model, [bn for _, _, _, bn in pairs], data.clean, ctx.device, inputs=True)
        pruned = {}
        for (conv_name, conv, _, bn), stats in zip(pairs, clean):
            eps = bn.eps
            kl = gaussian_kl(bn.running_mean.double(), bn.running_var.double() + eps,
                             stats.mean.to(bn.running_mean.device), stats.var.to(bn.running_mean.device) + eps)
            outliers = layer_outliers(kl, self.u)
            zero_channels(conv, outliers.nonzero().squeeze(1), bn)
            pruned[conv_name] = outliers.cpu()
        ctx.report(**outlier_report(pruned))
        return model
