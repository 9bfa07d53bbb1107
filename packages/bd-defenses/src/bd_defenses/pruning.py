"""Layer-wise outlier pruning shared by BNP and CLP (Zheng et al. 2022a/b): within each
layer, channels whose score exceeds mean + u * std of that layer's scores are pruned."""

from __future__ import annotations

import torch
from torch import Tensor


def layer_outliers(scores: Tensor, u: float) -> Tensor:
    """Boolean mask of channels with score > mean + u * std (torch's unbiased std, as the papers'
    code: `kl_div.std()`, `channel_lips.std()`)."""
    scores = scores.double()
    if scores.numel() < 2:
        return torch.zeros_like(scores, dtype=torch.bool)
    return scores > scores.mean() + u * scores.std()


def outlier_report(pruned: dict[str, Tensor]) -> dict[str, object]:
    """What goes into the result record: channels pruned per layer and in total."""
    per_layer = {name: int(mask.sum()) for name, mask in pruned.items() if int(mask.sum())}
    total = sum(int(m.numel()) for m in pruned.values())
    return {
        "pruned_per_layer": per_layer,
        "pruned": sum(per_layer.values()),
        "channels": total,
        "pruned_fraction": round(sum(per_layer.values()) / max(1, total), 5),
    }


def bn_scale(bn: torch.nn.BatchNorm2d) -> Tensor:
    """gamma / sqrt(running_var + eps): how a BN rescales each channel in eval mode."""
    return bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
