"""Throughput of poisoned, augmented training batches: bd's batched tensor pipeline
versus the per-sample PIL + torchvision transforms + DataLoader pipeline that
BackdoorBench-style code uses, doing the same work (BadNets trigger on 10 % of the
rows, random crop with padding 4, horizontal flip, to-float, normalize).

Ratio = baseline time / bd time, from the same run (see bench/report.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from bd_core.attacks import BadNets
from bd_core.data import Augment, make_synthetic
from PIL import Image
from torch.utils.data import DataLoader, Dataset

N, BATCH = 4096, 128
train = make_synthetic("train", n_train=N, size=32, channels=3)
trigger = BadNets().fit(train, seed=0)
poisoned = torch.zeros(N, dtype=torch.bool)
poisoned[torch.randperm(N)[: N // 10]] = True
mean, std = train.mean_std()


def bd_epoch() -> int:
    g = torch.Generator().manual_seed(0)
    aug = Augment(padding=4, hflip=True)
    seen = 0
    for idx in torch.randperm(N, generator=g).split(BATCH):
        offsets, flip = aug.draw(len(idx), g)
        x = trigger.apply(train.images[idx], poisoned[idx], mean, std, offsets, aug.padding, flip)
        seen += x.shape[0]
    return seen


class PerSamplePIL(Dataset):
    def __init__(self) -> None:
        self.images = train.images.permute(0, 2, 3, 1).numpy()  # HWC uint8, as datasets store them
        self.labels = train.labels.numpy()
        self.flags = poisoned.numpy()
        self.pattern = trigger.pattern.permute(1, 2, 0).numpy().astype(np.uint8)
        self.mask = trigger.mask.permute(1, 2, 0).numpy().astype(bool)[..., 0]
        self.transform = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean.tolist(), std.tolist()),
            ]
        )

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.flags[i]:
            img = img.copy()
            img[self.mask] = self.pattern[self.mask]
        return self.transform(Image.fromarray(img)), int(self.labels[i])


def pil_epoch(workers: int) -> int:
    loader = DataLoader(PerSamplePIL(), batch_size=BATCH, shuffle=True, num_workers=workers)
    return sum(x.shape[0] for x, _ in loader)


@pytest.mark.benchmark(group="data-pipeline")
def test_bd_batched_pipeline(benchmark):
    assert benchmark.pedantic(bd_epoch, rounds=5, iterations=1) == N


@pytest.mark.benchmark(group="data-pipeline")
def test_baseline_pil_dataloader(benchmark):
    assert benchmark.pedantic(pil_epoch, args=(0,), rounds=3, iterations=1) == N


@pytest.mark.benchmark(group="data-pipeline")
def test_baseline_pil_dataloader_2_workers(benchmark):
    assert benchmark.pedantic(pil_epoch, args=(2,), rounds=3, iterations=1) == N
