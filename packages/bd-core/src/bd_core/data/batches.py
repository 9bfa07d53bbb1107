"""The defender's and the trainer's images as model inputs: one path for every batch bd feeds a
model. uint8 images go through the fused kernel (crop/flip, to float, normalize) either as they
are (`normalized_batch`), with fresh random crop/flip drawn from a generator
(`augmented_batch`), or as a `make_batch` for the shared trainer (`clean_batches`)."""

from __future__ import annotations

import torch
from bd_kernels import apply_trigger
from torch import Tensor

from bd_core.data.augment import Augment
from bd_core.data.imageset import ImageSet
from bd_core.train import BatchFn


def normalized_batch(
    images: Tensor, mean: Tensor, std: Tensor, offsets: Tensor | None, padding: int, flip: Tensor | None
) -> Tensor:
    """Clean images through the same fused kernel: crop/flip, to float, normalize."""
    dev = images.device
    return apply_trigger(images, mean=mean.to(dev), std=std.to(dev), crop_offsets=offsets, padding=padding, flip=flip)


def augmented_batch(images: Tensor, augment: Augment, g: torch.Generator, mean: Tensor, std: Tensor) -> Tensor:
    """Clean uint8 images with fresh random crop/flip parameters from `g`, normalized."""
    offsets, flip = augment.draw(len(images), g)
    dev = images.device
    return normalized_batch(images, mean, std, offsets.to(dev), augment.padding, None if flip is None else flip.to(dev))


def clean_batches(data: ImageSet, augment: Augment | None, device: str | torch.device = "cpu") -> BatchFn:
    """make_batch for the shared trainer: rows `idx` of `data`, augmented (or not, when `augment`
    is None) and normalized with the set's own statistics, with their labels."""
    mean, std = (t.to(device) for t in data.mean_std())
    images = data.images.to(device)

    def make_batch(idx: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        batch = images[idx.to(device)]
        if augment is None:
            return normalized_batch(batch, mean, std, None, 0, None), data.labels[idx]
        return augmented_batch(batch, augment, g, mean, std), data.labels[idx]

    return make_batch
