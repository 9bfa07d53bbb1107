"""`bd show`: a PNG grid of what an attack does — clean images, poisoned images, and the
amplified difference — for a handful of non-target test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from bd_core.attacked import AttackSpec, fitted_trigger, training_subset
from bd_core.data import ImageSet
from PIL import Image


def to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """Normalized [N,C,H,W] back to uint8 [N,H,W,C]."""
    pixels = (x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)) * 255
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def attack_grid(attack_name: str, train: ImageSet, test: ImageSet, target: int = 0, count: int = 8, seed: int = 0,
                scale: int = 4, preset: str = "quick") -> tuple[Image.Image, float]:
    """(grid image, largest pixel difference). Rows: clean, poisoned, |difference| stretched to full range.

    The trigger is fitted on the preset's training images exactly as for training, and
    expensive ones (LF) come from the same cache, so the picture shows the trained trigger."""
    spec = AttackSpec(train.info.name, "preact-resnet18", attack_name, 0.1, target, seed, preset)
    trigger = fitted_trigger(spec.build_attack(), training_subset(train, spec.recipe, seed), spec)
    rows = (test.labels != target).nonzero().squeeze(1)[:count]
    mean, std = test.mean_std()
    clean = to_uint8(trigger.apply(test.images[rows], None, mean, std), mean, std)
    poisoned = to_uint8(trigger.apply(test.images[rows], torch.ones(len(rows), dtype=torch.bool), mean, std), mean, std)
    diff = np.abs(poisoned.astype(np.int16) - clean.astype(np.int16))
    peak = int(diff.max())
    amplified = (diff * (255.0 / max(peak, 1))).astype(np.uint8)
    tiles = np.concatenate([np.concatenate(list(r), axis=1) for r in (clean, poisoned, amplified)], axis=0)
    if tiles.shape[-1] == 1:
        tiles = tiles[..., 0]
    image = Image.fromarray(tiles)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image, peak


def save_attack_grid(path: Path, attack_name: str, train: ImageSet, test: ImageSet, target: int = 0) -> int:
    image, peak = attack_grid(attack_name, train, test, target)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return peak
