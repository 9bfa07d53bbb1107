"""LF (Zeng, Park, Mok & Jia, ICCV 2021, "Rethinking the backdoor attacks' triggers: a
frequency perspective"): a smooth, low-frequency trigger. bd generates it the way the
paper does: a universal adversarial perturbation towards the target class, found by
gradient steps against a clean surrogate model, projected after every step onto the
low frequencies (a square window of the 2-D spectrum) and an L-infinity budget. The
poisoned image is x + delta, clipped to the pixel range. BackdoorBench ships such
perturbations as files; bd makes its own and saves it with the attacked model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bd_core.attacks.base import Attack, PatternTrigger
from bd_core.data.augment import Augment
from bd_core.data.batches import clean_batches
from bd_core.data.imageset import ImageSet
from bd_core.data.mitigation import stratified_index
from bd_core.models import create_model
from bd_core.train import fit as train_fit
from bd_core.train import optimize


def low_pass(delta: Tensor, window: int) -> Tensor:
    """Keep the spatial frequencies |ky|, |kx| <= window of each channel; zero the rest."""
    h, w = delta.shape[-2:]
    spectrum = torch.fft.fft2(delta)
    ky = torch.fft.fftfreq(h, 1 / h).abs().view(-1, 1)
    kx = torch.fft.fftfreq(w, 1 / w).abs().view(1, -1)
    keep = (ky <= window) & (kx <= window)
    return torch.fft.ifft2(spectrum * keep).real


@dataclass(frozen=True)
class LF(Attack):
    name = "lf"
    cache_trigger = True
    paper = "Zeng et al., Rethinking the Backdoor Attacks' Triggers: A Frequency Perspective (ICCV 2021)"
    eps: float = 0.1  # L-infinity budget on the 0..1 pixel scale
    window: float = 0.125  # kept frequencies: |k| <= window * image size
    steps: int = 300
    lr: float = 0.01
    surrogate_epochs: int = 2
    surrogate_images: int = 10_000
    surrogate_width: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1 or not 0 < self.window <= 0.5 or self.steps < 1 or self.surrogate_epochs < 1:
            raise ValueError(f"invalid LF settings: {self}")

    def fit(self, train: ImageSet, seed: int, target: int = 0) -> PatternTrigger:
        surrogate = self.surrogate(train, seed)
        delta = self.universal_perturbation(surrogate, train, seed, target)
        s = train.image_size
        return PatternTrigger(delta * 255.0, torch.ones(1, s, s), mode="add")

    def surrogate(self, train: ImageSet, seed: int) -> torch.nn.Module:
        """A clean model of the same architecture family, trained briefly on clean data."""
        g = torch.Generator().manual_seed(seed + 1)
        per_class = max(1, self.surrogate_images // train.num_classes)
        subset = train.subset(stratified_index(train.labels, train.num_classes, per_class, g))
        torch.manual_seed(seed + 1)
        model = create_model(
            "preact-resnet18", train.num_classes, train.channels, train.image_size, self.surrogate_width
        )
        make_batch = clean_batches(subset, Augment.for_dataset(train.info))
        train_fit(
            model,
            make_batch,
            len(subset),
            epochs=self.surrogate_epochs,
            batch_size=128,
            lr=0.05,
            seed=seed + 1,
            description="LF: training the clean surrogate",
        )
        return model.eval()

    def universal_perturbation(self, model: torch.nn.Module, train: ImageSet, seed: int, target: int) -> Tensor:
        """delta [C,H,W] on the 0..1 scale: low-frequency, |delta| <= eps (up to the final filter's ripple)."""
        g = torch.Generator().manual_seed(seed + 2)
        victims = (train.labels != target).nonzero().squeeze(1)
        c, s = train.channels, train.image_size
        window = max(1, round(self.window * s))
        mean, std = (t.view(1, -1, 1, 1) for t in train.mean_std())
        delta = torch.zeros(1, c, s, s, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        for p in model.parameters():
            p.requires_grad_(False)

        def random_victims():  # one step is one "epoch" of the loop: a fresh batch of non-target images
            rows = victims[torch.randint(0, len(victims), (128,), generator=g)]
            return [(train.images[rows].to(torch.get_default_dtype()) / 255.0, torch.full((len(rows),), target))]

        def project_low_frequency() -> None:
            with torch.no_grad():
                delta.copy_(low_pass(delta.clamp(-self.eps, self.eps), window))

        optimize(
            lambda x, y: F.cross_entropy(model(((x + delta).clamp(0, 1) - mean) / std), y),
            random_victims,
            opt,
            epochs=self.steps,
            after_step=project_low_frequency,
            tick=lambda: None,
        )
        return delta.detach()[0]
