"""The defender's clean images as float pixels in [0, 1], for defenses that perturb inputs
(AWM, FMP, NPD, NC, PBE, i-BAU, SAU): perturbations live in pixel space, are clamped to
valid images, and are normalized exactly as the model's training data was."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from bd_core.data import ImageSet
from torch import Tensor


@dataclass
class Pixels:
    x: Tensor  # [N, C, H, W] float32 in [0, 1], on the defense's device
    y: Tensor  # [N] int64, same device
    mean: Tensor  # [1, C, 1, 1]
    std: Tensor

    @classmethod
    def of(cls, data: ImageSet, device: str | torch.device = "cpu") -> Pixels:
        mean, std = data.mean_std()
        return cls(
            data.images.to(device).float().div_(255),
            data.labels.to(device),
            mean.view(1, -1, 1, 1).to(device),
            std.view(1, -1, 1, 1).to(device),
        )

    def __len__(self) -> int:
        return len(self.y)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def bounds(self) -> tuple[Tensor, Tensor]:
        """The normalized values of pixel 0 and 1: where a perturbation in input space is clamped."""
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(index, images, labels) batches; shuffled when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for idx in order.split(batch_size):
            idx = idx.to(self.x.device)
            yield idx, self.x[idx], self.y[idx]


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
