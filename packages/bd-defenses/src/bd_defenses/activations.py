"""Activation capture for the statistics-based defenses (FP, BNP, MM-BD, UNIT):
run the defender's clean data through the model once and accumulate per-channel
statistics of several layers' outputs (or inputs) with bd_kernels' one-pass `channel_stats`."""

from __future__ import annotations

import torch
import torch.nn as nn
from bd_core.data import Augment, ImageSet
from bd_core.data.batches import augmented_batch
from bd_core.models import as_feature_map
from bd_kernels import ChannelStats, apply_trigger


@torch.no_grad()
def layers_statistics(
    model: nn.Module,
    layers: list[nn.Module],
    data: ImageSet,
    device: str = "cpu",
    batch_size: int = 256,
    inputs: bool = False,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
) -> list[ChannelStats]:
    """Per-channel count/mean/M2/min/max of each layer's output (or input) over `data`, in
    eval mode, in one pass over the data (through `augment`'s random crop/flip when given)."""
    stats = [ChannelStats() for _ in layers]

    def hook_for(s: ChannelStats):
        def hook(module, args, output):
            s.update(as_feature_map(args[0] if inputs else output))

        return hook

    handles = [layer.register_forward_hook(hook_for(s)) for layer, s in zip(layers, stats, strict=True)]
    was_training = model.training
    model.eval()
    mean, std = (t.to(device) for t in data.mean_std())
    try:
        for batch in data.images.split(batch_size):
            batch = batch.to(device)
            if augment is None:
                model(apply_trigger(batch, mean=mean, std=std))
            else:
                model(augmented_batch(batch, augment, generator or torch.Generator(), mean, std))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def layer_statistics(
    model: nn.Module, layer: nn.Module, data: ImageSet, device: str = "cpu", batch_size: int = 256, inputs: bool = False
) -> ChannelStats:
    """`layers_statistics` for a single layer."""
    return layers_statistics(model, [layer], data, device, batch_size, inputs)[0]
