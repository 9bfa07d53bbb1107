"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible warping trigger.

A random k x k field of 2-D offsets, normalized by its mean magnitude and upsampled
bicubically to the image, is scaled by s / H and added to the identity sampling grid;
poisoned images are resampled through that grid. WaNet controls training: in every
batch a `ratio` share of rows is warped and relabelled, and `cross_ratio` times as
many are warped through the grid plus per-sample random noise and keep their labels
("noise mode"), so that the model learns this exact warp and not warps in general.
BackdoorBench: k 4, s 0.5, cross ratio 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bd_core.attacks.base import Attack, BatchFn, Trigger, trigger_kind
from bd_core.data.augment import Augment
from bd_core.data.batches import augmented_batch, normalized_batch
from bd_core.data.imageset import ImageSet


def identity_grid(size: int) -> Tensor:
    line = torch.linspace(-1, 1, size)
    ys, xs = torch.meshgrid(line, line, indexing="ij")
    return torch.stack((xs, ys), dim=2).unsqueeze(0)  # [1,H,W,2], (x, y) as grid_sample wants


def warp_field(size: int, k: int, generator: torch.Generator) -> Tensor:
    """The upsampled random offset field [1,H,W,2] (before the s / H scaling)."""
    ins = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    ins = ins / ins.abs().mean()
    return F.interpolate(ins, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


@trigger_kind("warp")
@dataclass
class WarpTrigger(Trigger):
    """Resamples poisoned rows through a fixed grid (after crop/flip/normalize, as WaNet does)."""

    grid: Tensor  # [1,H,W,2] sampling grid in grid_sample's (x, y) coordinates

    def apply(self, images, poisoned, mean, std, crop_offsets=None, padding=0, flip=None) -> Tensor:
        x = normalized_batch(images, mean, std, crop_offsets, padding, flip)
        if poisoned is not None and bool(poisoned.any()):
            rows = poisoned.nonzero().squeeze(1)
            x[rows] = self.warp(x[rows])
        return x

    def warp(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        grid = self.grid.to(x.device).expand(len(x), -1, -1, -1)
        if noise is not None:
            grid = (grid + noise).clamp(-1, 1)
        return F.grid_sample(x, grid, align_corners=True)

    def artifacts(self) -> dict[str, Tensor]:
        return {"grid": self.grid.contiguous()}

    @classmethod
    def from_saved(cls, artifacts, settings) -> WarpTrigger:
        grid = artifacts["grid"]
        if grid.dim() != 4 or grid.shape[0] != 1 or grid.shape[-1] != 2:
            raise ValueError(f"warp grid must be [1,H,W,2], got {tuple(grid.shape)}")
        return cls(grid)


@dataclass(frozen=True)
class WaNet(Attack):
    name = "wanet"
    paper = "Nguyen & Tran, WaNet - Imperceptible Warping-based Backdoor Attack (ICLR 2021)"
    training_controlled = True
    # 5 quick epochs reach about half the ASR on Fashion-MNIST; 15 reach 99 % (docs/attacks.md)
    preset_recipes = {"quick": {"epochs": 15}}
    k: int = 4
    s: float = 0.5
    cross_ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.k < 2 or self.s <= 0 or self.cross_ratio < 0:
            raise ValueError(f"need k >= 2, s > 0, cross_ratio >= 0; got {self.k}, {self.s}, {self.cross_ratio}")

    def fit(self, train: ImageSet, seed: int, target: int = 0) -> WarpTrigger:
        size = train.image_size
        field = warp_field(size, self.k, torch.Generator().manual_seed(seed))
        grid = (identity_grid(size) + self.s * field / size).clamp(-1, 1)
        return WarpTrigger(grid)

    def training_batches(
        self,
        train: ImageSet,
        trigger: WarpTrigger,
        poisoned: Tensor,
        ratio: float,
        target: int,
        augment: Augment,
        device: str,
    ) -> BatchFn:
        mean, std = train.mean_std()
        images, size = train.images.to(device), train.image_size

        def make_batch(idx: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
            x = augmented_batch(images[idx.to(device)], augment, g, mean, std)
            y = train.labels[idx].clone()
            n_bd = int(len(idx) * ratio)
            n_cross = min(int(n_bd * self.cross_ratio), len(idx) - n_bd)
            if n_bd:
                x[:n_bd] = trigger.warp(x[:n_bd])
                y[:n_bd] = target
            if n_cross:
                noise = (torch.rand(n_cross, size, size, 2, generator=g) * 2 - 1).to(device) / size
                x[n_bd : n_bd + n_cross] = trigger.warp(x[n_bd : n_bd + n_cross], noise)
            return x, y

        return make_batch
