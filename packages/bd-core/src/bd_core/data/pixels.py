"""The defender's clean images as float pixels in [0, 1]: the pixel-space view of an `ImageSet`,
for code that perturbs inputs (AWM, FMP, NPD, NC, PBE, i-BAU, SAU, BTI-DBF, the unlearning
step): perturbations live in pixel space, are clamped to valid images, and are normalized
exactly as the model's training data was. Normalized and augmented batches of the same images
come from `bd_core.data.batches`; `Pixels.augmented` gives randomly cropped and flipped images
still in [0, 1], for defenses whose reference code perturbs its training transform's output."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from bd_core.data.augment import Augment
from bd_core.data.batches import augmented_batch
from bd_core.data.imageset import ImageSet


@dataclass
class Pixels:
    x: Tensor  # [N, C, H, W] in [0, 1], torch's default dtype, on the defense's device
    y: Tensor  # [N] int64, same device
    mean: Tensor  # [1, C, 1, 1]
    std: Tensor
    images: Tensor | None = None  # the uint8 images x was made from (Pixels.of), for augmentation

    @classmethod
    def of(cls, data: ImageSet, device: str | torch.device = "cpu") -> Pixels:
        mean, std = data.mean_std()
        return cls(
            data.images.to(device, torch.get_default_dtype()).div_(255),
            data.labels.to(device),
            mean.view(1, -1, 1, 1).to(device),
            std.view(1, -1, 1, 1).to(device),
            data.images.to(device),
        )

    def __len__(self) -> int:
        return len(self.y)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def bounds(self) -> tuple[Tensor, Tensor]:
        """The normalized values of pixel 0 and 1: where a perturbation in input space is clamped."""
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std

    def augmented(self, idx: Tensor, augment: Augment, generator: torch.Generator) -> Tensor:
        """Rows `idx` with a fresh random crop of the zero-padded image and flip, still [0, 1]
        pixels (the fused kernel with mean 0 and std 1)."""
        if self.images is None:
            raise ValueError("augmentation needs the uint8 images: build the pixels with Pixels.of(data)")
        channels = self.x.shape[1]
        zero = torch.zeros(channels, device=self.x.device)
        return augmented_batch(self.images[idx], augment, generator, zero, torch.ones_like(zero))

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(index, images, labels) batches; shuffled when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for idx in order.split(batch_size):
            idx = idx.to(self.x.device)
            yield idx, self.x[idx], self.y[idx]


def epoch_batches(
    pixels: Pixels, batch_size: int, generator: torch.Generator | None = None, augment: Augment | None = None
) -> Callable[[], Iterator[tuple[Tensor, Tensor]]]:
    """One epoch's (images, labels) batches of `pixels` for `bd_core.train.optimize`, reshuffled
    every epoch when a generator is given, and with crop/flip redrawn every epoch when `augment`
    is given (the reference loaders' training transform)."""
    if augment is None:
        return lambda: ((x, y) for _, x, y in pixels.batches(batch_size, generator))
    if generator is None:
        raise ValueError("augmented batches need a generator to draw their crops and flips from")
    return lambda: (
        (pixels.augmented(idx, augment, generator), y) for idx, _, y in pixels.batches(batch_size, generator)
    )
