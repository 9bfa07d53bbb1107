"""Intermediate outputs of a model in one forward pass, for defenses that act on a model's
inner layers (NAD's attention maps). The split at the penultimate feature map is part of the
model contract itself: `model.forward_features` and `model.forward_head`."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


def stage_outputs(model: nn.Module, stages: list[nn.Module], x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """(logits, outputs of `stages`) in one forward pass."""
    outs: list[Tensor] = []
    handles = [s.register_forward_hook(lambda m, a, o: outs.append(o) and None) for s in stages]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, outs
