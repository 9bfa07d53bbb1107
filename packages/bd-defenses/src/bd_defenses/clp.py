"""CLP, Channel Lipschitzness-based Pruning (Zheng et al., ECCV 2022): data-free.

The upper bound of each channel's Lipschitz constant (UCLC) is the spectral norm of its
filter, reshaped to c x (h*w), scaled by |gamma / sigma| of the BN that normalizes it; channels
whose UCLC exceeds the layer's mean + u * std are pruned by zeroing that BN's weight and bias
(survey Sec. 3.1.3; u = 3). The mitigation set is not used.

As in the authors' code (and the survey's fork), every BatchNorm2d is paired with the last
Conv2d registered before it: in conv-BN networks that is the conv it normalizes; in
PreAct-ResNet a block's first BN, which normalizes the residual stream, takes the previous
block's last conv (its 1x1 shortcut where it has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from bd_core.config import setting
from torch import Tensor

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.pruning import bn_scale, layer_outliers, outlier_report
from bd_defenses.registry import register
from bd_defenses.surgery import zero_bn_channels


@torch.no_grad()
def channel_lipschitz_bounds(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> Tensor:
    """UCLC of every output channel: ||scale_k * W_k||_2 with W_k of shape [in, kh*kw]."""
    w = conv.weight.detach().double()
    if bn is not None:
        w = w * bn_scale(bn).double().abs().view(-1, 1, 1, 1)
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], w.shape[1], -1), ord=2)


def bn_after_conv(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d, nn.Conv2d]]:
    """(name, BN, the last conv registered before it) for every BN whose channels that conv's
    outputs match: the authors' pairing."""
    pairs, conv = [], None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            conv = module
        elif isinstance(module, nn.BatchNorm2d) and conv is not None and conv.out_channels == module.num_features:
            pairs.append((name, module, conv))
    return pairs


@register(
    "clp", family="pruning", paper="Zheng et al., Data-free Backdoor Removal based on Channel Lipschitzness (ECCV 2022)"
)
@dataclass(frozen=True)
class CLP(Defense):
    requires: ClassVar[dict[str, str]] = {
        "batchnorm": "it bounds each conv channel's Lipschitz constant through the BatchNorm after it"
    }
    tune: ClassVar[tuple[dict[str, Any], ...]] = (
        {"u": 4.0},
        {"u": 3.0},
        {"u": 2.0},
    )  # --tune, mildest first: lower u prunes more
    u: float = setting(3.0, -10, 100)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pruned = {}
        for name, bn, conv in bn_after_conv(model):
            outliers = layer_outliers(channel_lipschitz_bounds(conv, bn), self.u)
            zero_bn_channels(bn, outliers.nonzero().squeeze(1))
            pruned[name] = outliers.cpu()
        ctx.report(data_free=True, **outlier_report(pruned))
        return model
