"""Helpers for defenses that work on the defender's images in pixel space (`bd_core.data.pixels`):
clamping normalized images to valid pixels, and clean accuracy on the defender's own images."""

from __future__ import annotations

import torch
import torch.nn as nn
from bd_core.data.pixels import Pixels
from torch import Tensor


def clamp_between(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Clamp normalized images to the valid range given per channel by `Pixels.bounds()`."""
    return torch.maximum(torch.minimum(x, high), low)


@torch.no_grad()
def accuracy(model: nn.Module, pixels: Pixels, batch_size: int = 512, perturb: Tensor | None = None) -> float:
    """Clean accuracy (eval mode, no augmentation) on the defender's own images."""
    was_training = model.training
    model.eval()
    correct = 0
    for _, x, y in pixels.batches(batch_size):
        if perturb is not None:
            x = (x + perturb).clamp(0, 1)
        correct += int((model(pixels.normalize(x)).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(1, len(pixels))
