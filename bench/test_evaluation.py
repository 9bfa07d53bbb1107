"""Evaluation throughput: ACC/ASR/RA of a quick-width PreAct-ResNet18 on 10 000 test images,
bd's `evaluate` (no autograd, batches of 256 in channels_last, through the fused trigger kernel) against the
per-sample evaluation loop of BackdoorBench-style code (PIL-free here: a tensor per image,
normalized with torchvision's transform, a DataLoader of batch 128, autograd on)."""

from __future__ import annotations

import pytest
import torch
from bd_core.attacks import BadNets
from bd_core.data import make_synthetic
from bd_core.metrics import evaluate
from bd_core.models import create_model
from torch.utils.data import DataLoader, TensorDataset

N_TEST = 10_000


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    test = make_synthetic("test", n_test=N_TEST, size=28, channels=1)
    model = create_model("preact-resnet18", 10, 1, 28, 0.25).eval()
    trigger = BadNets().fit(test, 0)
    return test, model, trigger


@pytest.mark.benchmark(group="evaluation 10k images, quick PreAct-ResNet18")
def test_evaluate_bd(benchmark, world):
    test, model, trigger = world
    metrics = benchmark.pedantic(lambda: evaluate(model, test, trigger, 0), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images/s"] = round(2 * N_TEST / benchmark.stats.stats.median)
    assert 0 <= metrics.acc <= 1


@pytest.mark.benchmark(group="evaluation 10k images, quick PreAct-ResNet18")
def test_evaluate_loader_baseline(benchmark, world):
    test, model, trigger = world
    mean, std = test.mean_std()
    clean = (test.images.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    poisoned_u8 = test.images.clone()
    poisoned_u8[..., -3:, -3:] = 255
    poisoned = (poisoned_u8.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    def loop():
        correct = 0
        for images in (clean, poisoned):
            for x, y in DataLoader(TensorDataset(images, test.labels), batch_size=128):
                correct += int((model(x).argmax(1) == y).sum())
        return correct

    benchmark.pedantic(loop, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images/s"] = round(2 * N_TEST / benchmark.stats.stats.median)
