"""A procedural dataset for fast tests: each class is a smooth random template,
each sample a shifted, noisy copy. Learnable in a few epochs by tiny models."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bd_core.data.imageset import DatasetInfo, ImageSet


def make_synthetic(
    split: str,
    *,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 32,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
) -> ImageSet:
    """Deterministic class-template images; train and test draw different samples."""
    g = torch.Generator().manual_seed(seed)
    # float64 throughout: ATen's vectorized float32 kernels (the normal sampler, the interpolation)
    # round differently from its scalar ones, which would make the data depend on the CPU
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g, dtype=torch.float64)
    templates = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 140 + 30
    n = n_train if split == "train" else n_test
    g = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    images = templates[labels]
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    for dy in range(-2, 3):  # a few vectorized rolls instead of one per sample
        for dx in range(-2, 3):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if sel.any():
                images[sel] = images[sel].roll((dy, dx), dims=(2, 3))
    images = images + torch.randn(images.shape, generator=g, dtype=torch.float64) * 12
    images = images.round().clamp(0, 255).to(torch.uint8)
    info = DatasetInfo(
        name="synthetic",
        classes=tuple(f"class{i}" for i in range(num_classes)),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        hflip=True,
        note="procedural test data",
        # each image is already shifted by up to 2 px; a random crop on top would also cut a corner
        # trigger away in many poisoned images, and the quick recipe's few steps would not learn it
        crop_padding=0,
    )
    return ImageSet(images, labels, info, split)
