"""BPP (Wang, Zhai & Ma, CVPR 2022): the trigger is colour-depth reduction. Every
channel is squeezed to `squeeze` levels with Floyd-Steinberg dithering, a change the
eye does not notice. BPP controls training: in every batch a `ratio` share of rows is
squeezed and relabelled, and a `neg_ratio` share are "negative" samples — the clean
image plus the quantization residual of another training image, label kept — so the
model keys on the squeeze itself, not on any small perturbation.
BackdoorBench: squeeze 8, dithering, neg_ratio 0.1 (cf. attack/bpp.py there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bd_core.attacks.base import Attack, BatchFn, PixelTrigger, trigger_kind
from bd_core.data.augment import Augment
from bd_core.data.batches import augmented_batch
from bd_core.data.imageset import ImageSet


def squeeze_levels(x: Tensor, levels: int) -> Tensor:
    """Nearest of `levels` evenly spaced values in 0..255 (float in, float out)."""
    return torch.round(x / 255.0 * (levels - 1)) / (levels - 1) * 255.0


def floyd_steinberg(images: Tensor, levels: int) -> Tensor:
    """Quantize uint8 [N,C,H,W] to `levels` per channel with Floyd-Steinberg error diffusion.

    The scan is sequential over pixels (each error feeds the next pixels), so the loop
    runs over the H*W positions and is vectorized over images and channels.
    """
    x = images.to(torch.float64).clone()
    n, c, h, w = x.shape
    for i in range(h):
        for j in range(w):
            old = x[:, :, i, j]
            new = squeeze_levels(old, levels)
            err = old - new
            x[:, :, i, j] = new
            if j + 1 < w:
                x[:, :, i, j + 1] += err * (7 / 16)
            if i + 1 < h:
                if j > 0:
                    x[:, :, i + 1, j - 1] += err * (3 / 16)
                x[:, :, i + 1, j] += err * (5 / 16)
                if j + 1 < w:
                    x[:, :, i + 1, j + 1] += err * (1 / 16)
    return x.round().clamp(0, 255).to(torch.uint8)


def squeeze(images: Tensor, levels: int, dithering: bool) -> Tensor:
    if dithering:
        return floyd_steinberg(images, levels)
    return squeeze_levels(images.float(), levels).round().clamp(0, 255).to(torch.uint8)


@trigger_kind("squeeze")
@dataclass
class SqueezeTrigger(PixelTrigger):
    """Poisoned rows are colour-squeezed (uint8 to uint8); the trigger has no tensors, only settings."""

    levels: int = 8
    dithering: bool = True

    def poison_pixels(self, images: Tensor) -> Tensor:
        return squeeze(images.cpu(), self.levels, self.dithering).to(images.device)

    def artifacts(self) -> dict[str, Tensor]:
        return {}

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "levels": self.levels, "dithering": self.dithering}

    @classmethod
    def from_saved(cls, artifacts, settings) -> SqueezeTrigger:
        return cls(levels=int(settings["levels"]), dithering=bool(settings["dithering"]))


@dataclass(frozen=True)
class BPP(Attack):
    name = "bpp"
    paper = "Wang, Zhai & Ma, BppAttack: Stealthy and Efficient Trojan Attacks via Image Quantization (CVPR 2022)"
    training_controlled = True
    # on Fashion-MNIST 5 quick epochs reach 2 % ASR at 10 %, 15 reach 57 %, 30 reach 87 % (docs/attacks.md)
    preset_recipes = {"quick": {"epochs": 30}}
    squeeze: int = 8
    dithering: bool = True
    neg_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not 2 <= self.squeeze <= 128 or not 0 <= self.neg_ratio < 1:
            raise ValueError(f"need 2 <= squeeze <= 128 and 0 <= neg_ratio < 1, got {self.squeeze}, {self.neg_ratio}")

    def fit(self, train: ImageSet, seed: int, target: int = 0) -> SqueezeTrigger:
        return SqueezeTrigger(levels=self.squeeze, dithering=self.dithering)

    def training_batches(
        self,
        train: ImageSet,
        trigger: SqueezeTrigger,
        poisoned: Tensor,
        ratio: float,
        target: int,
        augment: Augment,
        device: str,
    ) -> BatchFn:
        mean, std = train.mean_std()
        images = train.images.to(device)
        squeezed = trigger.poison_rows(images, torch.ones(len(images), dtype=torch.bool))  # once, not per batch
        residual = squeezed.to(torch.int16) - images.to(torch.int16)

        def make_batch(idx: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
            dev_idx = idx.to(device)
            batch = images[dev_idx].clone()
            y = train.labels[idx].clone()
            n_bd = int(len(idx) * ratio)
            n_neg = min(int(len(idx) * self.neg_ratio), len(idx) - n_bd)
            if n_bd:
                batch[:n_bd] = squeezed[dev_idx[:n_bd]]
                y[:n_bd] = target
            if n_neg:
                others = torch.randint(0, len(train), (n_neg,), generator=g).to(device)
                neg = batch[n_bd : n_bd + n_neg].to(torch.int16) + residual[others]
                batch[n_bd : n_bd + n_neg] = neg.clamp(0, 255).to(torch.uint8)
            return augmented_batch(batch, augment, g, mean, std), y

        return make_batch
