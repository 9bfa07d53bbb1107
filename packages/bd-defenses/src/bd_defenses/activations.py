"""Activation capture shared by the statistics-based defenses (FP, BNP, MM-BD, UNIT, NC):
run the defender's clean data through the model and accumulate per-channel
statistics of one layer's output with bd_kernels' one-pass `channel_stats`."""

from __future__ import annotations

import torch
import torch.nn as nn

from bd_core.data import ImageSet
from bd_kernels import ChannelStats, apply_trigger


@torch.no_grad()
def layer_statistics(
    model: nn.Module, layer: nn.Module, data: ImageSet, device: str = "cpu", batch_size: int = 256, inputs: bool = False
) -> ChannelStats:
    """Per-channel count/mean/M2/min/max of `layer`'s output (or input) over `data`, in eval mode."""
    stats = ChannelStats()

    def hook(module, args, output):
        stats.update(args[0] if inputs else output)

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    mean, std = (t.to(device) for t in data.mean_std())
    try:
        for batch in data.images.split(batch_size):
            model(apply_trigger(batch.to(device), mean=mean, std=std))
    finally:
        handle.remove()
        model.train(was_training)
    return stats
