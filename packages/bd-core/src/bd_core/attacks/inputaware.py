"""InputAware, the input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020): a
generator G draws a trigger pattern for each input and a mask network M says where it
goes, x' = x + (G(x) - x) * M(x), so no two inputs share a trigger.

Training, as in the authors' code and BackdoorBench:
1. M alone, for `mask_epochs` clean epochs: a density loss keeps the mask near
   `mask_density` of the pixels, and a diversity loss |x1 - x2| / |M(x1) - M(x2)|
   makes different inputs get different masks. M is then frozen.
2. G jointly with the classifier, inside bd's shared trainer: in every batch a
   `ratio` share of rows gets its own trigger and the target label, a `cross_ratio`
   share gets the trigger of another image and keeps its label ("cross-trigger"
   mode: a trigger works only on the input it was made for), and G also minimises
   the diversity loss on its patterns. The classifier's SGD step is the trainer's;
   G's Adam step runs after it on the same backward pass.
Both networks are saved with the attacked model; G and M work on normalized images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bd_core.attacks.base import Attack, TrainingPlan, Trigger, trigger_kind
from bd_core.attacks.networks import EncoderDecoder, frozen, generator_shape, load_module_tensors, module_tensors
from bd_core.data.augment import Augment
from bd_core.data.batches import augmented_batch, clean_batches, normalized_batch
from bd_core.data.imageset import ImageSet
from bd_core.train import optimize

EPSILON = 1e-7


def diversity_loss(x1: Tensor, x2: Tensor, out1: Tensor, out2: Tensor) -> Tensor:
    """mean over pairs of RMS(x1 - x2) / RMS(out1 - out2): small when different inputs get different outputs."""
    images = (x1 - x2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    outputs = (out1 - out2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    return (images / (outputs + EPSILON)).mean()


def squash(x: Tensor) -> Tensor:
    """The generators' output layer: tanh into (0, 1)."""
    return torch.tanh(x) / (2 + EPSILON) + 0.5


def sharp_mask(m: Tensor) -> Tensor:
    """InputAware's near-binary threshold of a (0, 1) mask: tanh(20 m - 10) / 2 + 0.5 (0.5 stays 0.5)."""
    return torch.tanh(m * 20 - 10) / (2 + EPSILON) + 0.5


def stamp(x: Tensor, pattern: Tensor, mask: Tensor) -> Tensor:
    return x + (pattern - x) * mask


class Generators(nn.Module):
    """The pattern generator G and the mask network M, on normalized images."""

    def __init__(self, channels: int, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        base, depth = generator_shape(channels)
        self.pattern = EncoderDecoder(channels, channels, base, depth)
        self.mask = EncoderDecoder(channels, 1, base, depth)
        self.register_buffer("mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("std", std.view(1, -1, 1, 1).clone())

    def patterns(self, x: Tensor) -> Tensor:
        """G(x): a pattern in 0..1 pixels (tanh squashed, as the paper), returned normalized."""
        return (squash(self.pattern(x)) - self.mean) / self.std

    def masks(self, x: Tensor) -> Tensor:
        return sharp_mask(squash(self.mask(x)))

    def stamp(self, x: Tensor, source: Tensor | None = None) -> Tensor:
        """x with the trigger made for `source` (default: for x itself; another batch: cross-trigger)."""
        source = x if source is None else source
        return stamp(x, self.patterns(source), self.masks(source))


@trigger_kind("inputaware")
@dataclass
class InputAwareTrigger(Trigger):
    nets: Generators

    @torch.no_grad()
    def apply(self, images, poisoned, mean, std, crop_offsets=None, padding=0, flip=None) -> Tensor:
        x = normalized_batch(images, mean, std, crop_offsets, padding, flip)
        if poisoned is not None and bool(poisoned.any()):
            self.nets.to(x.device).eval()
            rows = poisoned.nonzero().squeeze(1)
            x[rows] = self.nets.stamp(x[rows])
        return x

    @torch.no_grad()
    def apply_cross(self, images: Tensor, sources: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """Cross-trigger inputs: each image carries the trigger made for the matching `sources` image.
        The backdoor should not fire on them (the authors' cross-trigger test)."""
        self.nets.to(images.device).eval()
        x, s = (normalized_batch(b, mean, std, None, 0, None) for b in (images, sources))
        return self.nets.stamp(x, source=s)

    def artifacts(self) -> dict[str, Tensor]:
        return module_tensors("generators", self.nets)

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "channels": int(self.nets.mean.shape[1])}

    @classmethod
    def from_saved(cls, artifacts, settings) -> InputAwareTrigger:
        channels = int(settings["channels"])
        nets = Generators(channels, torch.zeros(channels), torch.ones(channels))
        return cls(load_module_tensors(nets, artifacts, "generators"))


@dataclass(frozen=True)
class InputAware(Attack):
    name = "inputaware"
    paper = "Nguyen & Tran, Input-Aware Dynamic Backdoor Attack (NeurIPS 2020)"
    training_controlled = True
    trigger_trained_with_model = True
    cache_trigger = True  # stage 1 (the mask network) does not depend on the poison ratio: all ratios share it
    preset_settings = {"quick": {"mask_epochs": 3}}
    # on Fashion-MNIST 5 quick epochs reach 72 % ASR at 10 % (docs/attacks.md)
    preset_recipes = {"quick": {"epochs": 15}}
    cross_ratio: float = 0.1  # share of each batch in cross-trigger mode (p_cross)
    lr_generator: float = 0.01
    lr_mask: float = 0.01
    lambda_div: float = 1.0
    lambda_norm: float = 100.0
    mask_density: float = 0.032
    mask_epochs: int = 25
    batch_size: int = 128

    def __post_init__(self) -> None:
        if not 0 <= self.cross_ratio < 1 or not 0 < self.mask_density < 1 or self.mask_epochs < 1:
            raise ValueError(f"invalid InputAware settings: {self}")

    def fit(self, train: ImageSet, seed: int, target: int = 0) -> InputAwareTrigger:
        """Stage 1: train the mask network; G starts untrained and learns with the classifier.
        (The generators refuse image sides their pooling cannot halve, on the first batch.)"""
        torch.manual_seed(seed)
        mean, std = train.mean_std()
        nets = Generators(train.channels, mean, std)
        self.train_mask(nets, train, torch.Generator().manual_seed(seed))
        return InputAwareTrigger(nets)

    def train_mask(self, nets: Generators, train: ImageSet, g: torch.Generator) -> None:
        opt = torch.optim.Adam(nets.mask.parameters(), lr=self.lr_mask, betas=(0.5, 0.9))
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 20], gamma=0.1)  # the authors' schedule
        augment, (mean, std) = Augment.for_dataset(train.info), train.mean_std()

        def image_pairs():  # (x1, x2): two independently shuffled, augmented batches
            first = torch.randperm(len(train), generator=g).split(self.batch_size)
            second = torch.randperm(len(train), generator=g).split(self.batch_size)
            for idx1, idx2 in zip(first, second, strict=True):
                yield (
                    augmented_batch(train.images[idx1], augment, g, mean, std),
                    augmented_batch(train.images[idx2], augment, g, mean, std),
                )

        def sparse_and_diverse(x1: Tensor, x2: Tensor) -> Tensor:
            m1, m2 = nets.masks(x1), nets.masks(x2)
            norm = F.relu(m1 - self.mask_density).mean()
            return self.lambda_norm * norm + self.lambda_div * diversity_loss(x1, x2, m1, m2)

        optimize(
            sparse_and_diverse,
            image_pairs,
            opt,
            epochs=self.mask_epochs,
            model=nets.mask,
            scheduler=sched,
            description="InputAware: training the mask network",
            steps_per_epoch=-(-len(train) // self.batch_size),
        )
        frozen(nets.mask)

    def training_plan(
        self,
        train: ImageSet,
        trigger: InputAwareTrigger,
        poisoned: Tensor,
        ratio: float,
        target: int,
        augment: Augment,
        device: str,
        seed: int = 0,
    ) -> TrainingPlan:
        """Stage 2: clean batches from the trainer; the step poisons them through G (so G gets gradients)."""
        nets = trigger.nets.to(device)
        frozen(nets.mask)  # also when stage 1 came from the trigger cache
        nets.pattern.train()
        opt_g = torch.optim.Adam(nets.pattern.parameters(), lr=self.lr_generator, betas=(0.5, 0.9))
        mean, std = train.mean_std()
        images = train.images.to(device)
        others = torch.Generator().manual_seed(seed + 7)  # draws the second images (cross mode, diversity)

        make_batch = clean_batches(train, augment, device)

        def step(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            n_bd = int(len(x) * ratio)
            n_cross = min(int(len(x) * self.cross_ratio), len(x) - n_bd)
            rows = torch.randint(0, len(train), (max(n_cross, n_bd),), generator=others)
            x2 = augmented_batch(images[rows.to(device)], augment, others, mean, std)
            p1, p2 = nets.patterns(x[:n_bd]), nets.patterns(x2)
            bd = stamp(x[:n_bd], p1, nets.masks(x[:n_bd]))
            cross = stamp(x[n_bd : n_bd + n_cross], p2[:n_cross], nets.masks(x2[:n_cross]))
            inputs = torch.cat([bd, cross, x[n_bd + n_cross :]])
            labels = torch.cat([torch.full_like(y[:n_bd], target), y[n_bd:]])
            loss = F.cross_entropy(model(inputs), labels)
            if n_bd and self.lambda_div:
                loss = loss + self.lambda_div * diversity_loss(x[:n_bd], x2[:n_bd], p1, p2[:n_bd])
            return loss

        def after_step() -> None:  # G's update, on the gradients of the trainer's backward pass
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)

        return TrainingPlan(make_batch, step, after_step)
