"""The model split at its penultimate feature map, for defenses that act on features
(BTI-DBF's feature mask, NAD's attention maps): every bd model computes
classifier(avgpool(feature_map).flatten(1))."""

from __future__ import annotations

import torch.nn as nn
from bd_core.models import anatomy
from torch import Tensor


class _Stop(Exception):
    """Raised from a hook once the layer of interest has run; the rest of the forward is wasted work."""


def layer_output(model: nn.Module, layer: nn.Module, x: Tensor, inputs: bool = False) -> Tensor:
    """`layer`'s output (or input) for `x`; the forward pass stops right after it."""
    seen: list[Tensor] = []

    def hook(module, args, output=None):
        seen.append(args[0] if inputs else output)
        raise _Stop

    handle = layer.register_forward_pre_hook(hook) if inputs else layer.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


class FeatureSplit:
    def __init__(self, model: nn.Module) -> None:
        parts = anatomy(model)
        self.model = model
        self.pool = parts.features[1]
        self.classifier = parts.classifier[1]

    def features(self, x: Tensor) -> Tensor:
        """The map that global pooling receives [N, C, H, W] (the rest of the forward is skipped)."""
        return layer_output(self.model, self.pool, x, inputs=True)

    def head(self, feature_map: Tensor) -> Tensor:
        return self.classifier(self.pool(feature_map).flatten(1))


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
