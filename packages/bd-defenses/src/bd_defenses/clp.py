"""CLP, Channel Lipschitzness-based Pruning (Zheng et al., ECCV 2022): data-free.

The upper bound of each channel's Lipschitz constant (UCLC) is the spectral norm of its
filter, reshaped to c x (h*w) and scaled by the BN that follows it; channels whose UCLC
exceeds the layer's mean + u * std are pruned (survey Sec. 3.1.3; u = 3). The mitigation set
is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from bd_core.models import anatomy
from torch import Tensor

from bd_defenses.base import Context, Defense, MitigationData, check_between
from bd_defenses.pruning import bn_scale, layer_outliers, outlier_report
from bd_defenses.registry import register
from bd_defenses.surgery import zero_channels


@torch.no_grad()
def channel_lipschitz_bounds(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> Tensor:
    """UCLC of every output channel: ||scale_k * W_k||_2 with W_k of shape [in, kh*kw]."""
    w = conv.weight.detach().double()
    if bn is not None:
        w = w * bn_scale(bn).double().view(-1, 1, 1, 1)
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], w.shape[1], -1), ord=2)


@register("clp", family="pruning", paper="Zheng et al., Data-free Backdoor Removal based on Channel Lipschitzness (ECCV 2022)")
@dataclass(frozen=True)
class CLP(Defense):
    u: float = 3.0

    def __post_init__(self) -> None:
        check_between("u", self.u, -10.0, 100.0)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        parts = anatomy(model)
        bn_of = {conv_name: bn for conv_name, _, _, bn in parts.conv_bn}
        pruned = {}
        for conv_name, conv in parts.convs:
            bn = bn_of.get(conv_name)
            outliers = layer_outliers(channel_lipschitz_bounds(conv, bn), self.u)
            zero_channels(conv, outliers.nonzero().squeeze(1), bn)
            pruned[conv_name] = outliers.cpu()
        ctx.report(data_free=True, **outlier_report(pruned))
        return model
