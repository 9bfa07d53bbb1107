"""The defender's clean images as float pixels in [0, 1]: the pixel-space view of an `ImageSet`,
for code that perturbs inputs (AWM, FMP, NPD, NC, PBE, i-BAU, SAU, BTI-DBF, the unlearning
step): perturbations live in pixel space, are clamped to valid images, and are normalized
exactly as the model's training data was. Normalized and augmented batches of the same images
come from `bd_core.data.batches`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from bd_core.data.imageset import ImageSet


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


def epoch_batches(pixels: Pixels, batch_size: int, generator: torch.Generator | None = None
                  ) -> Callable[[], Iterator[tuple[Tensor, Tensor]]]:
    """One epoch's (images, labels) batches of `pixels` for `bd_core.train.optimize`, reshuffled
    every epoch when a generator is given."""
    return lambda: ((x, y) for _, x, y in pixels.batches(batch_size, generator))
