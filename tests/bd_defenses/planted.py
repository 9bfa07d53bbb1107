"""A small model with a planted backdoor whose trigger-sensitive channel is known.

Two conv/BN/ReLU layers, global average pooling and a linear head, trained on clean
synthetic data. Then channel K of both convs becomes a backdoor path: conv1[K] is a
matched filter for the BadNets patch (bottom-right white 3x3) whose threshold sits just
above the largest response any clean training image produces, conv2[K] relays it, and the
head maps it to the target class. BN running statistics of channel K are those of a
poisoned training mix (10 % triggered), as training on poisoned data would leave them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.data import ImageSet, make_synthetic, mitigation_set
from bd_core.data.batches import clean_batches
from bd_core.models import BdModel, ModelFacts
from bd_core.train import fit

K = 3  # the planted channel
TARGET = 0
WIDTH = 64


class Planted(BdModel):
    facts = ModelFacts(
        pool="avgpool", classifier="linear", last_conv="conv2", polarizer_before="conv2", stages=("relu1", "relu2")
    )

    def __init__(self, in_channels: int = 1, width: int = WIDTH, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(width, num_classes)

    def forward_features(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


def add_patch(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    out[..., -3:, -3:] = 255
    return out


def normalized(images: torch.Tensor, data: ImageSet) -> torch.Tensor:
    mean, std = data.mean_std()
    return (images.to(torch.get_default_dtype()) / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


@torch.no_grad()
def plant(
    model: Planted, train: ImageSet, scale: float = 4.0, margin: float = 2.0, relay: float = 20.0, head: float = 30.0
) -> Planted:
    model.eval()
    c_in = model.conv1.in_channels
    model.conv1.weight[K] = scale
    clean = F.conv2d(normalized(train.images, train), model.conv1.weight[K : K + 1], padding=1)
    threshold = float(clean.max()) + margin
    poisoned = train.images.clone()
    n_poison = len(poisoned) // 10
    poisoned[:n_poison] = add_patch(poisoned[:n_poison])
    x = normalized(poisoned, train)

    # conv1[K] -> bn1[K]: y = z - threshold, with running statistics of the poisoned mix
    z1 = F.conv2d(x, model.conv1.weight[K : K + 1], padding=1)
    set_bn_channel(model.bn1, z1, shift=-threshold)
    # conv2[K] relays relu1[K] only; no other channel reads it
    model.conv2.weight[K] = 0
    model.conv2.weight[:, K] = 0
    model.conv2.weight[K, K, 1, 1] = relay
    z2 = relay * F.relu(z1 - threshold)
    set_bn_channel(model.bn2, z2, shift=0.0)
    model.linear.weight[:, K] = 0
    model.linear.weight[TARGET, K] = head
    del c_in
    return model


def set_bn_channel(bn: nn.BatchNorm2d, z: torch.Tensor, shift: float) -> None:
    """Running stats of channel K from z (the poisoned mix); affine set so that bn(z) = z + shift."""
    mean, var = z.mean(), z.var(unbiased=False)
    bn.running_mean[K], bn.running_var[K] = mean, var
    bn.weight[K] = torch.sqrt(var + bn.eps)
    bn.bias[K] = mean + shift


class PlantedWorld(NamedTuple):
    """What the mechanism tests share: the data, the planted model (float64) and a clean set."""

    train: ImageSet
    test: ImageSet
    model: Planted
    clean: ImageSet  # the defender's mitigation set, SPC 10


def planted_world(n_train: int = 1000) -> PlantedWorld:
    """Synthetic 1x28x28 data and the planted model trained on it. Float32: the backdoor is set by
    hand with wide margins, and the mechanism tests hold across CPU paths in float32 (`make
    test-isa` checks it); float64 would cost 4x on every convolution."""
    train = make_synthetic("train", n_train=n_train, size=28, channels=1)
    test = make_synthetic("test", n_test=300, size=28, channels=1)
    return PlantedWorld(train, test, planted_model(train), mitigation_set(train, 10, 0))


def planted_model(train: ImageSet, epochs: int = 5, seed: int = 0) -> Planted:
    torch.manual_seed(seed)
    model = Planted(train.channels, WIDTH, train.num_classes)
    # small batches, many steps: clean accuracy ~0.99, so a clean error never reads as attack success
    fit(model, clean_batches(train, None, "cpu"), len(train), epochs=epochs, batch_size=32, lr=0.05, seed=seed)
    return plant(model, train)


@torch.no_grad()
def success_rates(model: nn.Module, data: ImageSet) -> tuple[float, float]:
    """(clean accuracy, attack success rate on non-target images) of `model` on `data`."""
    model.eval()
    acc = (model(normalized(data.images, data)).argmax(1) == data.labels).float().mean().item()
    victims = data.images[data.labels != TARGET]
    asr = (model(normalized(add_patch(victims), data)).argmax(1) == TARGET).float().mean().item()
    return acc, asr
